"""Receiver kinds: which known class an expression is an instance of.

Answers come from constructor calls the module can see:

- ``x = nn.Transformer(...)`` in the same function (or at module level for module code);
- ``self.x = nn.TransformerDecoder(...)`` in any method of the enclosing class (usually
  ``__init__``), and ``self.x.decoder`` through ``MEMBER_TYPES``;
- ``self.layers = nn.ModuleList([nn.TransformerDecoderLayer(...) for _ in ...])`` and then
  ``for layer in self.layers``;
- a class defined in the module that subclasses a known class without overriding ``forward``.

The answer is a set of canonical class names; ``UNKNOWN`` is in it when some assignment is not a
constructor the analysis understands. Rules act only when every candidate is one they know, so an
attribute re-bound to something else keeps them silent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, FrozenSet, List, Optional, Set, Union

import libcst as cst

from mllint.analysis.signatures import MEMBER_TYPES

if TYPE_CHECKING:
    from mllint.core.context import Context

UNKNOWN = "?"
Scope = Union[cst.FunctionDef, cst.Module]
_CONTAINERS = ("torch.nn.ModuleList", "torch.nn.Sequential")


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
        self.loop_targets: Dict[cst.Name, cst.BaseExpression] = {}
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
            values = self.scope_values.get(self._scope(at), {}).get(expr.value)
            if values is None and self._scope(at) is not self.ctx.module:
                values = self.scope_values.get(self.ctx.module, {}).get(expr.value)
            return self._kinds_of_values(values, at)
        if isinstance(expr, cst.Attribute):
            if isinstance(expr.value, cst.Name) and expr.value.value == "self":
                cls = self.ctx.enclosing(at, cst.ClassDef)
                values = self.attr_values.get(cls, {}).get(expr.attr.value) if cls else None
                return self._kinds_of_values(values, at)
            owner = self.kinds(expr.value, at)
            members = {MEMBER_TYPES.get(k, {}).get(expr.attr.value) for k in owner}
            if owner and None not in members:
                return frozenset(m for m in members if m)
            return frozenset({UNKNOWN})
        if isinstance(expr, cst.Call):
            return self.constructed(expr)
        return frozenset({UNKNOWN})

    def _kinds_of_values(self, values, at: cst.CSTNode) -> FrozenSet[str]:
        if not values:
            return frozenset({UNKNOWN})
        out: Set[str] = set()
        for value in values:
            if isinstance(value, _IterOf):
                out |= self.element_kinds(value.iterable, at)
            elif isinstance(value, cst.Call):
                out |= self.constructed(value)
            else:
                out.add(UNKNOWN)
        return frozenset(out)

    def constructed(self, call: cst.Call) -> FrozenSet[str]:
        """The class a constructor call makes (``UNKNOWN`` for anything else)."""
        if isinstance(call.func, cst.Name) and call.func.value in self.local_classes:
            return self.local_classes[call.func.value]
        candidates = {c for c in self.ctx.names.resolve(call.func) if c in _known_classes()}
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


def _known_classes() -> FrozenSet[str]:
    from mllint.analysis.signatures import CALLS, INSTANCE_CALLS

    return frozenset(INSTANCE_CALLS) | frozenset(CALLS) | frozenset(_CONTAINERS)
