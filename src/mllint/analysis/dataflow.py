"""Intra-function def-use: which expression flows into a name at a given point.

Deliberately simple and conservative: the value of a local name at a use is the right-hand side of
the last plain assignment to it that ends earlier in the same function (or module), through any
nesting of blocks. A loop target, ``with ... as``, augmented assignment or unpacking re-binds the
name to an unknown value. Tensor calls that keep a value's meaning (``.to(device)``, ``.bool()``,
``.transpose(0, 1)``, ...) are looked through; anything else ends a trace.

Three questions are answered here:

- ``reaching(name)``: the expression last assigned to a name before this use;
- ``trace(expr)``: the chain of expressions one value was computed from;
- ``derivation(expr)``: every sub-expression the value depends on, through assignments (for
  "does this tensor pass through a positional encoding on its way here?");
- ``unsliced_root(expr)``: the variable a value *is*, unchanged (``tgt`` for ``tgt.to(device)``,
  None for ``tgt[:-1]``), so two arguments can be compared as "the same un-sliced tensor".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Tuple

import libcst as cst

if TYPE_CHECKING:
    from mllint.core.context import Context

# Methods that return "the same tensor" for the purpose of asking what a value means.
TRANSPARENT_METHODS = frozenset({
    "to", "cuda", "cpu", "bool", "float", "half", "bfloat16", "long", "int", "byte", "type",
    "detach", "clone", "contiguous", "transpose", "t", "permute", "requires_grad_",
})
# Calls that keep the *content* of their first argument or receiver (for ``unsliced_root``):
# moving between devices or dtypes, but not transposing or reshaping.
_SAME_CONTENT_METHODS = frozenset({
    "to", "cuda", "cpu", "long", "int", "detach", "clone", "contiguous", "type",
})

_UNKNOWN_VALUE = None  # what a re-binding without a known value records


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


def _bound_names(target: cst.BaseExpression) -> Iterator[cst.Name]:
    if isinstance(target, cst.Name):
        yield target
    elif isinstance(target, (cst.Tuple, cst.List)):
        for element in target.elements:
            yield from _bound_names(element.value)
    elif isinstance(target, cst.StarredElement):
        yield from _bound_names(target.value)


class Assignments:
    """Assignments to local names per scope, in source order."""

    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self.by_scope: Dict[Tuple[cst.CSTNode, str], List[Tuple[int, Optional[cst.BaseExpression]]]] = {}
        for node in ctx.nodes(cst.Assign):
            for target in node.targets:
                if isinstance(target.target, cst.Name):
                    self._add(node, target.target.value, node.value)
                else:
                    for name in _bound_names(target.target):
                        self._add(node, name.value, _UNKNOWN_VALUE)
        for node in ctx.nodes(cst.AnnAssign):
            if isinstance(node.target, cst.Name) and node.value is not None:
                self._add(node, node.target.value, node.value)
        for node in ctx.nodes(cst.AugAssign):
            if isinstance(node.target, cst.Name):
                self._add(node, node.target.value, _UNKNOWN_VALUE)
        # Loop targets and ``with ... as`` are bound when the statement's header has run.
        for loop in (*ctx.nodes(cst.For), *ctx.nodes(cst.CompFor)):
            for name in _bound_names(loop.target):
                self._add(loop.target, name.value, _UNKNOWN_VALUE)
        for item in ctx.nodes(cst.WithItem):
            if item.asname is not None:
                for name in _bound_names(item.asname.name):
                    self._add(item, name.value, _UNKNOWN_VALUE)

    def _scope(self, node: cst.CSTNode) -> cst.CSTNode:
        function = self.ctx.enclosing(node, cst.FunctionDef)
        return function if function is not None else self.ctx.module

    def _add(self, node: cst.CSTNode, name: str, value: Optional[cst.BaseExpression]) -> None:
        key = (self._scope(node), name)
        self.by_scope.setdefault(key, []).append((self.ctx.end_order(node), value))

    def reaching(self, name: cst.Name) -> Optional[cst.BaseExpression]:
        """The value last assigned to ``name`` before this use, in its scope (None when the name
        is a parameter, a loop variable, or was last bound to something unknown)."""
        entries = self.by_scope.get((self._scope(name), name.value), [])
        at = self.ctx.order(name)
        before = [(end, value) for end, value in entries if end < at]
        return max(before, key=lambda entry: entry[0])[1] if before else None

    def is_bound_locally(self, name: cst.Name) -> bool:
        """Whether any binding of ``name`` in its scope comes before this use."""
        entries = self.by_scope.get((self._scope(name), name.value), [])
        at = self.ctx.order(name)
        return any(end < at for end, _ in entries)

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

    def derivation(self, expr: cst.BaseExpression, limit: int = 200) -> Iterator[cst.BaseExpression]:
        """Every expression the value of ``expr`` is computed from: its sub-expressions, and for
        each local name the value assigned to it, recursively (bounded by ``limit`` nodes)."""
        pending: List[cst.CSTNode] = [expr]
        seen = set()
        while pending and len(seen) < limit:
            node = pending.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, cst.BaseExpression):
                yield node
            if isinstance(node, cst.Name):
                value = self.reaching(node)
                if value is not None:
                    pending.append(value)
                continue
            if isinstance(node, (cst.Lambda, cst.BaseComp)):
                continue
            pending.extend(reversed(list(node.children)))

    def unsliced_root(self, expr: cst.BaseExpression) -> Optional[str]:
        """The source text of the variable ``expr`` is, unchanged: through device/dtype moves and
        plain re-assignments (``tgt = tgt.to(device)``), to a name, ``self.x`` or
        ``batch["key"]``. None when the value is sliced, indexed by position or computed."""
        current = expr
        for _ in range(8):
            while isinstance(current, cst.Call) and isinstance(current.func, cst.Attribute) \
                    and current.func.attr.value in _SAME_CONTENT_METHODS:
                current = current.func.value
            if isinstance(current, cst.Name):
                value = self.reaching(current)
                if value is None:
                    return current.value
                if isinstance(value, (cst.Name, cst.Attribute, cst.Subscript, cst.Call)):
                    current = value
                    continue
                return None
            if isinstance(current, cst.Attribute):
                base = self.ctx.code(current)
                return base if _is_plain_path(current) else None
            if isinstance(current, cst.Subscript):
                return self.ctx.code(current) if _string_keyed(current) else None
            return None
        return None


def _is_plain_path(node: cst.BaseExpression) -> bool:
    while isinstance(node, cst.Attribute):
        node = node.value
    return isinstance(node, cst.Name)


def _string_keyed(node: cst.Subscript) -> bool:
    """``batch["labels"]`` (a dict lookup, not a slice)."""
    if len(node.slice) != 1 or not isinstance(node.slice[0].slice, cst.Index):
        return False
    key = node.slice[0].slice.value
    return isinstance(key, cst.SimpleString) and isinstance(node.value, (cst.Name, cst.Attribute))
