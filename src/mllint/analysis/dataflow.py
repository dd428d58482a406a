"""Intra-function def-use: which expression flows into a name at a given point.

Deliberately simple and conservative: the value of a local name at a use is the right-hand side of
the last plain assignment to it that comes earlier in the same function (or module), through any
nesting of blocks. Tensor calls that keep a value's meaning (``.to(device)``, ``.bool()``,
``.transpose(0, 1)``, ...) are looked through; anything else ends the trace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import libcst as cst

if TYPE_CHECKING:
    from mllint.core.context import Context

# Methods that return "the same tensor" for the purpose of asking what a value means.
TRANSPARENT_METHODS = frozenset({
    "to", "cuda", "cpu", "bool", "float", "half", "bfloat16", "long", "int", "byte", "type",
    "detach", "clone", "contiguous", "transpose", "t", "permute", "requires_grad_",
})


def strip_transparent(expr: cst.BaseExpression) -> cst.BaseExpression:
    """``x.to(device).bool()`` -> ``x``; ``(x)`` -> ``x``; ``x.T`` -> ``x``."""
    while True:
        if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute) \
                and expr.func.attr.value in TRANSPARENT_METHODS:
            expr = expr.func.value
        elif isinstance(expr, cst.Attribute) and expr.attr.value in ("T", "data"):
            expr = expr.value
        else:
            return expr


class Assignments:
    """Plain ``name = value`` assignments per scope, in source order."""

    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self.by_scope: Dict[Tuple[cst.CSTNode, str], List[Tuple[int, cst.BaseExpression]]] = {}
        for node in ctx.nodes(cst.Assign):
            for target in node.targets:
                if isinstance(target.target, cst.Name):
                    self._add(node, target.target.value, node.value)
        for node in ctx.nodes(cst.AnnAssign):
            if isinstance(node.target, cst.Name) and node.value is not None:
                self._add(node, node.target.value, node.value)

    def _scope(self, node: cst.CSTNode) -> cst.CSTNode:
        function = self.ctx.enclosing(node, cst.FunctionDef)
        return function if function is not None else self.ctx.module

    def _add(self, node: cst.CSTNode, name: str, value: cst.BaseExpression) -> None:
        key = (self._scope(node), name)
        self.by_scope.setdefault(key, []).append((self.ctx.order(node), value))

    def reaching(self, name: cst.Name) -> Optional[cst.BaseExpression]:
        """The value last assigned to ``name`` before this use, in its scope."""
        entries = self.by_scope.get((self._scope(name), name.value), [])
        at = self.ctx.order(name)
        before = [value for order, value in entries if order < at]
        return before[-1] if before else None

    def trace(self, expr: cst.BaseExpression, limit: int = 4) -> List[cst.BaseExpression]:
        """``expr`` and what it was computed from: each step looks through transparent calls
        and follows a local name to its reaching assignment."""
        chain: List[cst.BaseExpression] = []
        seen = set()
        current: Optional[cst.BaseExpression] = expr
        while current is not None and len(chain) < limit and id(current) not in seen:
            seen.add(id(current))
            chain.append(current)
            stripped = strip_transparent(current)
            if stripped is not current:
                chain.append(stripped)
            current = self.reaching(stripped) if isinstance(stripped, cst.Name) else None
        return chain
