"""Positional encodings: which modules, attributes and expressions add position information, and
whether a value passes through one on its way to a call.

``nn.Transformer`` and its decoder add no position information (torch
``nn/modules/transformer.py``: ``Transformer.forward`` runs the encoder and the decoder on the
tensors it is given), so a model has to add it to the source *and* to the target. What counts:

- a local class that builds sin/cos tables (``torch.sin``, ``math.cos``, ``x.sin()``), registers
  a buffer named like a position table (``pe``, ``pos_embedding``), holds and uses a position
  table or another positional encoding, embeds ``torch.arange`` positions, or calls a function
  named like one; failing all that, a class *named* like one (``PositionalEncoding``, ``PosEnc``,
  ``RotaryEmbedding``), which is all there is to go on for an imported class;
- a ``self.`` attribute holding such a module, or named like a position table (``pe``, ``wpe``,
  ``pos_*``, ``position_*``, ``*_pos``) unless every value it is given is known not to be one
  (a dropout, a counter, a class without positional evidence);
- an *application*: a call of such a module or attribute, any use of a position attribute
  (``x + self.pe[:, :T]``, ``+ self.pos_emb(positions)``), an ``nn.Embedding`` called on
  ``torch.arange`` positions, a local or function named like a position table, or a
  ``self.method(x)`` helper whose return value holds one of these (followed one level deep).

``flow(expr)`` walks what a value is computed from: local assignments (``Assignments``), module
calls, tensor methods, library functions and one level of helper methods. It returns a ``Flow``:
the first application met, the token embedding or input projection the value comes from (its
arguments are not walked: token ids carry no position information), a parameter the value comes
from directly, and the first step the walk did not understand. A rule can then say both "passes
through a positional encoding" (``applied``) and "demonstrably does not" (``complete`` and
nothing applied).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Set

import libcst as cst

from mllint.analysis.dataflow import Assignments
from mllint.analysis.instances import Instances
from mllint.analysis.names import dotted, string_value

if TYPE_CHECKING:
    from mllint.core.context import Context

# PositionalEncoding, PosEnc, LearnedPositionEmbedding, RotaryEmbedding, SinusoidalEmbedding, RoPE.
CLASS_NAME = re.compile(r"pos(ition(al)?)?_?(enc|emb)|rotary|sinusoid|sincos|^rope", re.IGNORECASE)
# pe, wpe, pos_emb, pos_encoder, positional_encoding, position_embeddings, query_pos, rotary_emb,
# build_2d_sincos_position_embedding; not pose, post_norm or purpose.
TABLE_NAME = re.compile(r"^(pe|wpe|rope)$|^pos(_|$|enc|emb|ition)|(^|_)(pos|position|positional)(_|$)"
                        r"|rotary|sinusoid|sincos", re.IGNORECASE)
_SIN_COS = frozenset({"torch.sin", "torch.cos", "math.sin", "math.cos", "numpy.sin", "numpy.cos"})
_SIN_COS_METHODS = frozenset({"sin", "cos", "sin_", "cos_"})
# Modules a sequence enters as token ids or features and leaves as vectors.
EMBEDDING = "torch.nn.Embedding"
PROJECTION = "torch.nn.Linear"
_PARAMETER = "torch.nn.Parameter"
_SEQUENTIAL = "torch.nn.Sequential"
_LIBRARIES = ("torch.", "math.", "numpy.", "einops.")
_BUILTINS = frozenset({"len", "int", "float", "min", "max", "abs", "round", "range", "tuple", "list"})
_LITERALS = (cst.Integer, cst.Float, cst.Imaginary, cst.SimpleString, cst.ConcatenatedString,
             cst.FormattedString, cst.Ellipsis)
# Nodes whose children are walked as they are.
_STRUCTURE = (cst.BinaryOperation, cst.UnaryOperation, cst.Comparison, cst.ComparisonTarget,
              cst.BooleanOperation, cst.IfExp, cst.Tuple, cst.List, cst.Element, cst.StarredElement,
              cst.Arg, cst.SubscriptElement, cst.Index, cst.Slice)


@dataclass
class Flow:
    applied: Optional[cst.CSTNode] = None  # the first positional-encoding application met
    reason: str = ""  # why it is one
    embedded: Optional[cst.Call] = None  # the token embedding / input projection it comes from
    tokens: bool = False  # ``embedded`` embeds token ids (an nn.Embedding is involved)
    outside: Optional[cst.Name] = None  # a parameter it comes from, not through an embedding
    unknown: Optional[cst.CSTNode] = None  # the first step the walk did not understand

    @property
    def complete(self) -> bool:
        return self.unknown is None


def _methods(cls: cst.ClassDef) -> Dict[str, cst.FunctionDef]:
    return {s.name.value: s for s in cls.body.body if isinstance(s, cst.FunctionDef)}


def _param_names(function: cst.FunctionDef) -> List[str]:
    params = function.params
    return [p.name.value for p in (*params.posonly_params, *params.params, *params.kwonly_params)]


def _is_self_attribute(node: cst.BaseExpression) -> bool:
    return isinstance(node, cst.Attribute) and isinstance(node.value, cst.Name) and node.value.value == "self"


class Positional:
    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self.names = ctx.names
        self.instances = ctx.get(Instances)
        self.flows = ctx.get(Assignments)
        self.classes: Dict[str, List[cst.ClassDef]] = {}
        for cls in ctx.nodes(cst.ClassDef):
            self.classes.setdefault(cls.name.value, []).append(cls)
        self.calls_in: Dict[cst.ClassDef, List[cst.Call]] = {}
        for call in ctx.nodes(cst.Call):
            owner = ctx.enclosing(call, cst.ClassDef)
            if owner is not None:
                self.calls_in.setdefault(owner, []).append(call)
        self.buffers: Dict[cst.ClassDef, Set[str]] = {}
        for owner, calls in self.calls_in.items():
            for call in calls:
                if isinstance(call.func, cst.Attribute) and call.func.attr.value == "register_buffer" \
                        and call.args and string_value(call.args[0].value):
                    self.buffers.setdefault(owner, set()).add(string_value(call.args[0].value) or "")
        # ``self.<name>`` read in a method of the class other than ``__init__``.
        self.used: Dict[cst.ClassDef, Set[str]] = {}
        for node in ctx.nodes(cst.Attribute):
            if _is_self_attribute(node) and self._outside_init(node):
                owner = ctx.enclosing(node, cst.ClassDef)
                if owner is not None:
                    self.used.setdefault(owner, set()).add(node.attr.value)
        self._class_cache: Dict[cst.ClassDef, Optional[str]] = {}
        self._category_cache: Dict[cst.ClassDef, Optional[str]] = {}

    # -- classes -------------------------------------------------------------------------------
    def class_evidence(self, cls: cst.ClassDef) -> Optional[str]:
        """Why the local class ``cls`` is a positional encoding (None when it is not known to be)."""
        if cls not in self._class_cache:
            self._class_cache[cls] = None  # a class holding itself is not evidence
            evidence = self._structural_evidence(cls)
            if evidence is None and CLASS_NAME.search(cls.name.value):
                evidence = f"its name `{cls.name.value}`"
            self._class_cache[cls] = evidence
        return self._class_cache[cls]

    def _structural_evidence(self, cls: cst.ClassDef) -> Optional[str]:
        calls = self.calls_in.get(cls, [])
        for call in calls:
            resolved = self.names.resolve(call.func)
            if resolved & _SIN_COS or (not resolved and isinstance(call.func, cst.Attribute)
                                       and call.func.attr.value in _SIN_COS_METHODS):
                return f"it builds sin/cos tables (`{self.ctx.code(call.func)}`)"
        for name in sorted(self.buffers.get(cls, ())):
            if TABLE_NAME.search(name):
                return f"it registers the buffer `{name}`"
        for attr in sorted(self.used.get(cls, set()) & set(self.instances.attr_values.get(cls, {}))):
            evidence = self.attribute_evidence(cls, attr)
            if evidence is not None:
                return f"it uses `self.{attr}`, {evidence}"
        has_embedding = any(isinstance(v, cst.Call) and self.names.resolve(v.func) == {EMBEDDING}
                            for values in self.instances.attr_values.get(cls, {}).values() for v in values)
        for call in calls:
            if has_embedding and self.names.matches(call.func, "torch.arange") \
                    and self._outside_init(call):
                return "it embeds `torch.arange` positions"
            name = dotted(call.func)
            if name and not name.startswith("self.") and TABLE_NAME.search(name.rsplit(".", 1)[-1]):
                return f"it calls `{name}`"
        return None

    def _outside_init(self, node: cst.CSTNode) -> bool:
        function = self.ctx.enclosing(node, cst.FunctionDef)
        return function is not None and function.name.value != "__init__"

    def _local_class(self, call: cst.Call) -> Optional[cst.ClassDef]:
        if isinstance(call.func, cst.Name) and not self.names.resolve(call.func):
            found = self.classes.get(call.func.value, [])
            return found[0] if len(found) == 1 else None
        return None

    # -- attributes and module values ---------------------------------------------------------
    def attribute_evidence(self, cls: cst.ClassDef, attr: str) -> Optional[str]:
        """Why ``self.<attr>`` of ``cls`` holds a positional encoding or position table."""
        values = self.instances.attr_values.get(cls, {}).get(attr, [])
        for value in values:
            evidence = self.value_evidence(value)
            if evidence is not None:
                return evidence
        if not TABLE_NAME.search(attr):
            return None
        if attr in self.buffers.get(cls, ()):
            return f"the position buffer `{attr}`"
        if values and all(self._not_positional(v) for v in values):
            return None
        held = [dotted(v.func) for v in values if isinstance(v, cst.Call) and dotted(v.func)]
        return "named like a position table" + (f", holding `{held[0]}(...)`" if held else "")

    def value_evidence(self, value) -> Optional[str]:
        """Why a constructed value is a positional-encoding module."""
        if not isinstance(value, cst.Call):
            return None
        local = self._local_class(value)
        if local is not None:
            evidence = self.class_evidence(local)
            return None if evidence is None else f"a `{local.name.value}` ({evidence})"
        if self.names.matches(value.func, _SEQUENTIAL):
            for arg in value.args:
                evidence = self.value_evidence(arg.value)
                if evidence is not None:
                    return evidence
            return None
        name = dotted(value.func)  # an imported (or undefined) class: its name is the evidence
        last = name.rsplit(".", 1)[-1] if name else ""
        return f"a `{last}`" if CLASS_NAME.search(last) else None

    def _not_positional(self, value) -> bool:
        """Known not to be a position table: a literal, or a module that is not an embedding,
        a parameter or a class with positional evidence."""
        if isinstance(value, _LITERALS) or (
                isinstance(value, cst.Name) and value.value in ("True", "False", "None")):
            return True
        if isinstance(value, cst.Call):
            if self._local_class(value) is not None:
                return True  # value_evidence already found none
            resolved = self.names.resolve(value.func)
            return bool(resolved) and all(n.startswith("torch.nn.") and n not in (EMBEDDING, _PARAMETER)
                                          for n in resolved)
        return False

    def _module_values(self, func: cst.BaseExpression, at: cst.CSTNode) -> List[cst.BaseExpression]:
        """What a module-valued ``self.x`` or local ``x`` was assigned."""
        if _is_self_attribute(func):
            cls = self.ctx.enclosing(at, cst.ClassDef)
            return self.instances.attr_values.get(cls, {}).get(func.attr.value, []) if cls else []
        if isinstance(func, cst.Name):
            return self.instances.values(func.value, at)
        return []

    def module_category(self, value) -> Optional[str]:
        """``"tokens"`` (an ``nn.Embedding`` or a module holding one), ``"projection"`` (an
        ``nn.Linear`` input projection or a module holding one), ``"neutral"`` (a module that
        adds nothing to positions), or None (not understood)."""
        if not isinstance(value, cst.Call):
            return None
        local = self._local_class(value)
        if local is not None:
            return self._class_category(local)
        resolved = self.names.resolve(value.func)
        if not resolved or not all(n.startswith("torch.nn.") for n in resolved):
            return None
        if resolved == {EMBEDDING}:
            return "tokens"
        if resolved == {PROJECTION}:
            return "projection"
        if resolved == {_SEQUENTIAL}:
            return _combined([self.module_category(arg.value) for arg in value.args])
        return None if resolved & {_PARAMETER, EMBEDDING, PROJECTION} else "neutral"

    def _class_category(self, cls: cst.ClassDef) -> Optional[str]:
        """A local module class with no positional evidence whose parts are all understood."""
        if cls not in self._category_cache:
            self._category_cache[cls] = None
            self._category_cache[cls] = self._compute_class_category(cls)
        return self._category_cache[cls]

    def _compute_class_category(self, cls: cst.ClassDef) -> Optional[str]:
        if self.class_evidence(cls) is not None:
            return None
        parts = []
        for values in self.instances.attr_values.get(cls, {}).values():
            for value in values:
                if isinstance(value, cst.Call):
                    parts.append(self.module_category(value))
        for call in self.calls_in.get(cls, []):
            func = call.func
            if isinstance(func, cst.Name) and func.value not in _BUILTINS and func.value != "super" \
                    and not self.names.resolve(func) and self._local_class(call) is None:
                return None  # a function of this module: it might add anything
        return _combined(parts)

    # -- expressions ---------------------------------------------------------------------------
    def application(self, node: cst.CSTNode) -> Optional[str]:
        """Why ``node`` itself applies a positional encoding (None when it does not)."""
        if isinstance(node, cst.Call):
            func = node.func
            if isinstance(func, cst.Attribute) and func.attr.value == "forward":
                func = func.value
            if isinstance(func, cst.Call):
                return self.value_evidence(func)
            if _is_self_attribute(func) or isinstance(func, cst.Name):
                values = self._module_values(func, node)
                cls = self.ctx.enclosing(node, cst.ClassDef)
                if _is_self_attribute(func) and cls is not None:
                    if func.attr.value in _methods(cls):  # a helper: walked by ``flow``
                        name = func.attr.value
                        return f"the method `self.{name}`" if TABLE_NAME.search(name) else None
                    evidence = self.attribute_evidence(cls, func.attr.value)
                    if evidence is not None:
                        return evidence
                for value in values:
                    evidence = self.value_evidence(value)
                    if evidence is not None:
                        return evidence
                if values and all(isinstance(v, cst.Call) and self.names.resolve(v.func) == {EMBEDDING}
                                  for v in values) and self._has_arange(node):
                    return "an embedding of `torch.arange` positions"
            name = dotted(func)
            if name and not name.startswith("self.") and TABLE_NAME.search(name.rsplit(".", 1)[-1]):
                return f"a call of `{name}`"
            return None
        if _is_self_attribute(node):
            cls = self.ctx.enclosing(node, cst.ClassDef)
            if cls is not None and node.attr.value not in _methods(cls):
                return self.attribute_evidence(cls, node.attr.value)
            return None
        # A parameter or global named like a position table (a local's value is walked instead).
        if isinstance(node, cst.Name) and TABLE_NAME.search(node.value) and not self.names.resolve(node) \
                and self.flows.reaching(node) is None:
            return f"`{node.value}`, named like a position table"
        return None

    def _has_arange(self, call: cst.Call) -> bool:
        for arg in call.args:
            for node in self.flows.derivation(arg.value):
                if isinstance(node, cst.Call) and self.names.matches(node.func, "torch.arange"):
                    return True
        return False

    def flow(self, expr: cst.BaseExpression) -> Flow:
        """How the value of ``expr`` relates to positional encodings (see the module docstring)."""
        walk = _Walk(self)
        walk.visit(expr, {}, 0)
        return walk.flow

    def attributes(self, cls: cst.ClassDef) -> Dict[str, str]:
        """Every ``self.`` attribute of ``cls`` holding a positional encoding, with the evidence."""
        out = {}
        for attr in sorted(set(self.instances.attr_values.get(cls, {})) | self.buffers.get(cls, set())):
            evidence = self.attribute_evidence(cls, attr)
            if evidence is not None:
                out[attr] = evidence
        return out


def _combined(parts: List[Optional[str]]) -> Optional[str]:
    """The category of a module made of parts of these categories."""
    if None in parts:
        return None
    for category in ("tokens", "projection"):
        if category in parts:
            return category
    return "neutral"


class _Walk:
    """One walk of ``Positional.flow``. ``bound`` maps the parameters of the helper method being
    followed to the caller's arguments; ``depth`` is 1 inside a helper (helpers of helpers are
    not followed)."""

    def __init__(self, pos: Positional) -> None:
        self.pos = pos
        self.flow = Flow()
        self.seen: Set[int] = set()

    def _unknown(self, node: cst.CSTNode) -> None:
        if self.flow.unknown is None:
            self.flow.unknown = node

    def visit(self, node: cst.CSTNode, bound: Dict[str, cst.BaseExpression], depth: int) -> None:
        if id(node) in self.seen:
            return
        self.seen.add(id(node))
        reason = self.pos.application(node)
        if reason is not None and self.flow.applied is None:
            self.flow.applied, self.flow.reason = node, reason
        if isinstance(node, cst.Name):
            self._name(node, bound, depth)
        elif isinstance(node, cst.Attribute):
            if reason is None and not _is_self_attribute(node):
                self.visit(node.value, bound, depth)  # x.shape, batch.tgt; self.x: a setting
        elif isinstance(node, cst.Call):
            self._call(node, bound, depth)
        elif isinstance(node, cst.Subscript):
            self.visit(node.value, bound, depth)
            for element in node.slice:
                self.visit(element, bound, depth)
        elif isinstance(node, _STRUCTURE):
            for child in node.children:
                if isinstance(child, (cst.BaseExpression, cst.BaseElement, cst.ComparisonTarget, cst.Arg,
                                      cst.SubscriptElement, cst.BaseSlice)):
                    self.visit(child, bound, depth)
        elif not isinstance(node, _LITERALS):
            self._unknown(node)

    def _name(self, node: cst.Name, bound: Dict[str, cst.BaseExpression], depth: int) -> None:
        flows = self.pos.flows
        if node.value in ("True", "False", "None", "self"):
            return
        value = flows.reaching(node)
        if value is not None:
            self.visit(value, bound, depth)
            return
        if flows.is_bound_locally(node):
            self._unknown(node)  # a loop variable or an unpacked value
            return
        function = self.pos.ctx.enclosing(node, cst.FunctionDef)
        if function is not None and node.value in _param_names(function):
            if node.value in bound:  # a helper's parameter: the caller's argument (depth 0)
                self.visit(bound[node.value], {}, 0)
            elif self.flow.outside is None:
                self.flow.outside = node
        # Otherwise a module-level name (a constant, an import): no position information.

    def _call(self, call: cst.Call, bound: Dict[str, cst.BaseExpression], depth: int) -> None:
        pos = self.pos
        func = call.func
        if isinstance(func, cst.Attribute) and func.attr.value == "forward":
            func = func.value
        if _is_self_attribute(func):
            cls = pos.ctx.enclosing(call, cst.ClassDef)
            method = _methods(cls).get(func.attr.value) if cls is not None else None
            if method is not None:
                self._helper(call, method, depth)
                return
        if _is_self_attribute(func) or (isinstance(func, cst.Name) and not pos.names.resolve(func)
                                         and func.value not in _BUILTINS):
            values = pos._module_values(func, call)
            categories = {pos.module_category(v) for v in values}
            if not values or None in categories:
                if pos.application(call) is None:
                    self._unknown(call)
                self._arguments(call, bound, depth)
            elif categories & {"tokens", "projection"}:
                if self.flow.embedded is None:
                    self.flow.embedded, self.flow.tokens = call, "tokens" in categories
            else:
                self._arguments(call, bound, depth)
            return
        resolved = pos.names.resolve(func)
        if resolved and all(n.startswith(_LIBRARIES) for n in resolved):
            self._arguments(call, bound, depth)
        elif isinstance(func, cst.Attribute) and not resolved:
            self.visit(func.value, bound, depth)  # a tensor method
            self._arguments(call, bound, depth)
        elif isinstance(func, cst.Name) and func.value in _BUILTINS:
            self._arguments(call, bound, depth)
        elif pos.application(call) is None:
            self._unknown(call)

    def _arguments(self, call: cst.Call, bound: Dict[str, cst.BaseExpression], depth: int) -> None:
        for arg in call.args:
            self.visit(arg.value, bound, depth)

    def _helper(self, call: cst.Call, method: cst.FunctionDef, depth: int) -> None:
        """``self.method(x)``: walk what the method returns, its parameters standing for ``x``."""
        params = _param_names(method)[1:]
        if depth >= 1 or any(arg.star for arg in call.args):
            self._unknown(call)
            return
        inner: Dict[str, cst.BaseExpression] = {}
        positional = [a for a in call.args if a.keyword is None]
        for name, arg in zip(params, positional):
            inner[name] = arg.value
        for arg in call.args:
            if arg.keyword is not None:
                inner[arg.keyword.value] = arg.value
        returns = [r for r in self.pos.ctx.nodes(cst.Return) if r.value is not None
                   and self.pos.ctx.enclosing(r, cst.FunctionDef) is method]
        if not returns:
            self._unknown(call)
        for ret in returns:
            self.visit(ret.value, inner, depth + 1)

