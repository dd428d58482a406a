"""Receiver kinds: which known class an expression is an instance of.

Answers come from constructor calls the module can see:

- ``x = nn.Transformer(...)`` in the same function (or at module level for module code);
- ``self.x = nn.TransformerDecoder(...)`` in any method of the enclosing class (usually
  ``__init__``), and ``self.x.decoder`` through ``MEMBER_TYPES``;
- ``self.layers = nn.ModuleList([nn.TransformerDecoderLayer(...) for _ in ...])`` and then
  ``for layer in self.layers``;
- a class defined in the module that subclasses a known class without overriding ``forward``.

Hugging Face objects are recognised by how they are made: ``X.from_pretrained(...)``,
``X.from_config(...)``, ``X.from_encoder_decoder_pretrained(...)`` or ``X(...)`` of a class of
``transformers``, ``peft`` or ``trl`` gives the kind ``transformers.X``. Wrappers keep the kind of
what they wrap: ``get_peft_model(m, cfg)``, ``PeftModel.from_pretrained(m, path)``,
``prepare_model_for_kbit_training(m)``, ``torch.compile(m)``, and module methods that return the
module (``m.to(device)``, ``m.eval()``, ``m.half()``, ``m.merge_and_unload()``). What a kind *means*
(a decoder-only model, a tokenizer, ...) is asked of ``mllint.analysis.hf``.

The answer is a set of canonical class names; ``UNKNOWN`` is in it when some assignment is not a
constructor the analysis understands. Rules act only when every candidate is one they know, so an
attribute re-bound to something else keeps them silent. A home-grown model class (a minimal GPT
with its own ``generate``) or vLLM's ``LLM`` is never a Hugging Face kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, FrozenSet, List, Optional, Set, Union

import libcst as cst

from mllint.analysis.dataflow import Assignments
from mllint.analysis.signatures import MEMBER_TYPES

if TYPE_CHECKING:
    from mllint.core.context import Context

UNKNOWN = "?"
Scope = Union[cst.FunctionDef, cst.Module]
_CONTAINERS = ("torch.nn.ModuleList", "torch.nn.Sequential")
# Class methods that build an instance of their class.
LOADERS = frozenset({"from_pretrained", "from_config", "from_encoder_decoder_pretrained",
                     "from_single_file"})
# Libraries whose every public class is a kind in its own right (by canonical name).
_CLASS_LIBRARIES = ("transformers.", "peft.", "trl.", "torch.nn.")
# Functions returning (a wrapper of) their first argument's module.
WRAPPERS = frozenset({"peft.get_peft_model", "peft.prepare_model_for_kbit_training",
                       "peft.PeftModel.from_pretrained", "peft.PeftModelForCausalLM.from_pretrained",
                       "peft.PeftModelForSeq2SeqLM.from_pretrained", "torch.compile"})
# Module methods returning the module itself (or the same model, for peft's merge).
_SELF_METHODS = frozenset({"to", "cuda", "cpu", "eval", "train", "half", "float", "bfloat16",
                           "double", "requires_grad_", "merge_and_unload", "to_bettertransformer"})


def _assigned_pairs(node: cst.CSTNode):
    """(target, value) pairs of an Assign/AnnAssign (tuples unpacked only when both sides are)."""
    if isinstance(node, cst.Assign):
        for target in node.targets:
            yield target.target, node.value
    elif isinstance(node, cst.AnnAssign) and node.value is not None:
        yield node.target, node.value


class Instances:
    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        names = ctx.names
        # Local classes that stand for a known class (subclass without their own forward).
        self.local_classes: Dict[str, FrozenSet[str]] = {}
        for cls in ctx.nodes(cst.ClassDef):
            has_forward = any(isinstance(s, cst.FunctionDef) and s.name.value == "forward"
                              for s in cls.body.body)
            if has_forward:
                continue
            bases: Set[str] = set()
            for base in cls.bases:
                bases |= names.resolve(base.value)
            known = {b for b in bases if b in _known_classes()}
            if known:
                self.local_classes[cls.name.value] = frozenset(known)
        self.scope_values: Dict[Scope, Dict[str, List[cst.BaseExpression]]] = {}
        self.attr_values: Dict[cst.ClassDef, Dict[str, List[cst.BaseExpression]]] = {}
        for kind in (cst.Assign, cst.AnnAssign):
            for node in ctx.nodes(kind):
                for target, value in _assigned_pairs(node):
                    self._record(node, target, value)
        self._visiting: Set[object] = set()
        for loop in ctx.nodes(cst.For):
            if isinstance(loop.target, cst.Name):
                self._record(loop, loop.target, _IterOf(loop.iter))

    def _scope(self, node: cst.CSTNode) -> Scope:
        function = self.ctx.enclosing(node, cst.FunctionDef)
        return function if function is not None else self.ctx.module

    def _record(self, node: cst.CSTNode, target: cst.BaseExpression, value) -> None:
        if isinstance(target, cst.Name):
            self.scope_values.setdefault(self._scope(node), {}).setdefault(target.value, []).append(value)
        elif (isinstance(target, cst.Attribute) and isinstance(target.value, cst.Name)
              and target.value.value == "self"):
            cls = self.ctx.enclosing(node, cst.ClassDef)
            if cls is not None:
                self.attr_values.setdefault(cls, {}).setdefault(target.attr.value, []).append(value)

    # -- queries -----------------------------------------------------------------------------
    def kinds(self, expr: cst.BaseExpression, at: Optional[cst.CSTNode] = None) -> FrozenSet[str]:
        """Canonical class names ``expr`` may be an instance of, seen from node ``at``."""
        at = at or expr
        if isinstance(expr, cst.Name):
            scope = self._scope(at)
            values = self.scope_values.get(scope, {}).get(expr.value)
            if isinstance(scope, cst.FunctionDef):
                if expr.value in _parameters(scope):
                    # A parameter may be anything the caller passes.
                    return self._guarded((scope, expr.value), values, at) | {UNKNOWN}
                if values is None and (scope, expr.value) in self.ctx.get(Assignments).by_scope:
                    return frozenset({UNKNOWN})  # bound locally in a way not tracked here
                if values is None:
                    scope = self.ctx.module
                    values = self.scope_values.get(scope, {}).get(expr.value)
            return self._guarded((scope, expr.value), values, at)
        if isinstance(expr, cst.Attribute):
            if isinstance(expr.value, cst.Name) and expr.value.value == "self":
                cls = self.ctx.enclosing(at, cst.ClassDef)
                values = self.attr_values.get(cls, {}).get(expr.attr.value) if cls else None
                return self._guarded((cls, expr.attr.value), values, at)
            owner = self.kinds(expr.value, at)
            members = {MEMBER_TYPES.get(k, {}).get(expr.attr.value) for k in owner}
            if owner and None not in members:
                return frozenset(m for m in members if m)
            return frozenset({UNKNOWN})
        if isinstance(expr, cst.Call):
            return self.constructed(expr, at)
        return frozenset({UNKNOWN})

    def values(self, name: str, at: cst.CSTNode) -> List[cst.BaseExpression]:
        """Every value assigned to the local ``name`` in the scope of ``at`` (else the module)."""
        found = self.scope_values.get(self._scope(at), {}).get(name)
        if found is None:
            found = self.scope_values.get(self.ctx.module, {}).get(name, [])
        return [v for v in found if isinstance(v, cst.BaseExpression)]

    def _guarded(self, key, values, at: cst.CSTNode) -> FrozenSet[str]:
        """Kinds of a variable's values; a value that refers back to the variable itself
        (``model = model.to(device)``) adds nothing instead of recursing."""
        if key in self._visiting:
            return frozenset()
        self._visiting.add(key)
        try:
            return self._kinds_of_values(values, at)
        finally:
            self._visiting.discard(key)

    def _kinds_of_values(self, values, at: cst.CSTNode) -> FrozenSet[str]:
        if not values:
            return frozenset({UNKNOWN})
        out: Set[str] = set()
        for value in values:
            if isinstance(value, _IterOf):
                out |= self.element_kinds(value.iterable, at)
            elif isinstance(value, cst.Call):
                out |= self.constructed(value, at)
            elif isinstance(value, (cst.Name, cst.Attribute)):
                out |= self.kinds(value, at)
            else:
                out.add(UNKNOWN)
        return frozenset(out)

    def constructed(self, call: cst.Call, at: Optional[cst.CSTNode] = None) -> FrozenSet[str]:
        """The class a constructor, loader or wrapper call makes (``UNKNOWN`` for anything else)."""
        at = at or call
        func = call.func
        if isinstance(func, cst.Name) and func.value in self.local_classes:
            return self.local_classes[func.value]
        names = self.ctx.names.resolve(func)
        wrappers = names & WRAPPERS
        if wrappers and call.args and call.args[0].keyword is None and not call.args[0].star:
            inner = self.kinds(call.args[0].value, at)
            if UNKNOWN in inner and any(w.startswith("peft.") for w in wrappers):
                return frozenset({"peft.PeftModel"})  # a peft model around an unknown base
            return inner
        if isinstance(func, cst.Attribute):
            if func.attr.value in LOADERS:
                owners = {n for n in self.ctx.names.resolve(func.value) if _is_library_class(n)}
                return frozenset(owners) if owners else frozenset({UNKNOWN})
            if func.attr.value in _SELF_METHODS and not names:
                return self.kinds(func.value, at)
        candidates = {c for c in names if c in _known_classes() or _is_library_class(c)}
        return frozenset(candidates) if candidates else frozenset({UNKNOWN})

    def element_kinds(self, iterable: cst.BaseExpression, at: cst.CSTNode) -> FrozenSet[str]:
        """Kinds of the elements of ``nn.ModuleList([...])``-like containers."""
        if isinstance(iterable, (cst.Name, cst.Attribute)):
            if isinstance(iterable, cst.Attribute) and isinstance(iterable.value, cst.Name) \
                    and iterable.value.value == "self":
                cls = self.ctx.enclosing(at, cst.ClassDef)
                values = self.attr_values.get(cls, {}).get(iterable.attr.value) if cls else None
            elif isinstance(iterable, cst.Name):
                values = self.scope_values.get(self._scope(at), {}).get(iterable.value)
            else:
                values = None
            out: Set[str] = set()
            for value in values or [None]:
                out |= self._container_elements(value)
            return frozenset(out)
        return self._container_elements(iterable)

    def _container_elements(self, value) -> FrozenSet[str]:
        if isinstance(value, cst.Call) and self.ctx.names.resolve(value.func) & set(_CONTAINERS) \
                and value.args:
            inner = value.args[0].value
            if isinstance(inner, (cst.ListComp, cst.GeneratorExp)) and isinstance(inner.elt, cst.Call):
                return self.constructed(inner.elt)
            if isinstance(inner, (cst.List, cst.Tuple)) and inner.elements:
                out: Set[str] = set()
                for element in inner.elements:
                    out |= (self.constructed(element.value) if isinstance(element.value, cst.Call)
                            else {UNKNOWN})
                return frozenset(out)
        return frozenset({UNKNOWN})

    def is_instance(self, expr: cst.BaseExpression, classes, at: Optional[cst.CSTNode] = None) -> bool:
        """True when every candidate kind of ``expr`` is one of ``classes``."""
        kinds = self.kinds(expr, at)
        return bool(kinds) and all(k in classes for k in kinds)


class _IterOf:
    """Marks a loop variable: it takes the elements of ``iterable``."""

    def __init__(self, iterable: cst.BaseExpression) -> None:
        self.iterable = iterable


def _parameters(function: cst.FunctionDef) -> FrozenSet[str]:
    params = function.params
    names = [p.name.value for p in (*params.posonly_params, *params.params, *params.kwonly_params)]
    for star in (params.star_arg, params.star_kwarg):
        if isinstance(star, cst.Param):
            names.append(star.name.value)
    return frozenset(names)


def _is_library_class(name: str) -> bool:
    """``transformers.AutoModelForCausalLM``, ``peft.PeftModel``, ``torch.nn.Embedding``, ..."""
    if not name.startswith(_CLASS_LIBRARIES):
        return False
    last = name.rsplit(".", 1)[-1]
    return last[:1].isupper()


def _known_classes() -> FrozenSet[str]:
    from mllint.analysis.signatures import CALLS, INSTANCE_CALLS

    return frozenset(INSTANCE_CALLS) | frozenset(CALLS) | frozenset(_CONTAINERS)


def constructor_of(instances: Instances, expr: cst.BaseExpression, at: cst.CSTNode) -> Optional[cst.Call]:
    """The one constructor call that made ``expr``, seen from ``at``: a local's or a ``self.``
    attribute's only value (through ``x = y`` and module methods such as ``.to(device)``), or the
    element constructor of an ``nn.ModuleList([C(...) for _ in ...])`` a loop variable runs over.
    None when there are several values or the value is not a constructor call."""
    for _ in range(6):
        if isinstance(expr, cst.Call):
            func = expr.func
            if isinstance(func, cst.Attribute) and func.attr.value in _SELF_METHODS \
                    and not instances.ctx.names.resolve(func):
                expr, at = func.value, expr
                continue
            return expr
        if isinstance(expr, cst.Attribute) and isinstance(expr.value, cst.Name) and expr.value.value == "self":
            cls = instances.ctx.enclosing(at, cst.ClassDef)
            values = instances.attr_values.get(cls, {}).get(expr.attr.value, []) if cls else []
        elif isinstance(expr, cst.Name):
            scope = instances._scope(at)
            if isinstance(scope, cst.FunctionDef) and expr.value in _parameters(scope):
                return None
            values = instances.scope_values.get(scope, {}).get(expr.value)
            if values is None:
                values = instances.scope_values.get(instances.ctx.module, {}).get(expr.value, [])
        else:
            return None
        if len(values) != 1:
            return None
        value = values[0]
        if isinstance(value, _IterOf):
            container = constructor_of(instances, value.iterable, at)
            if container is None or not container.args \
                    or not instances.ctx.names.resolve(container.func) & set(_CONTAINERS):
                return None
            inner = container.args[0].value
            if isinstance(inner, (cst.ListComp, cst.GeneratorExp)) and isinstance(inner.elt, cst.Call):
                return inner.elt
            return None
        expr, at = value, value
    return None
