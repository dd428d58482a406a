"""Tensor layout provenance: is a value batch-first ``(batch, seq, ...)`` or sequence-first
``(seq, batch, ...)``, and how is that known?

torch's transformer modules and ``nn.MultiheadAttention`` read dim 0 as the sequence unless they
are built with ``batch_first=True`` (the default is False in every torch 2.x release, torch 2.13.0
``nn/modules/transformer.py`` and ``activation.py``), and nothing checks it when no mask is passed.
So "which layout does this input have?" is answered here, only from evidence that proves it:

- ``pad_sequence(seqs, batch_first=True)`` (``torch.nn.utils.rnn``) is batch-first; without the
  argument or with ``False`` it is sequence-first;
- the ``input_ids`` / ``attention_mask`` of a Hugging Face tokenizer call with
  ``return_tensors="pt"`` or of a collated loader batch (``batch["input_ids"]``) is batch-first;
- the output of a torch transformer module (not MHA, which returns a tuple) has the layout its
  ``batch_first`` declares.

The layout is carried through local assignments, tuple unpacking of a module-level helper's
returned tuple (``src_mask, src_pad = create_mask(src)``), ``for src, tgt in loader`` over a
``DataLoader(collate_fn=f)`` whose ``f`` returns a tuple, device/dtype moves, slices
(``x[:, :-1]``), elementwise arithmetic with values of unknown layout, ``nn.Embedding`` /
``nn.Dropout`` / ``nn.LayerNorm`` / ``nn.Linear`` calls, local token-embedding or
positional-encoding modules, and it is flipped by ``.transpose(0, 1)``, ``.t()``, ``.T`` and
``.permute(1, 0, ...)``. Anything else (``view``, ``reshape``, ``unsqueeze``, other modules, a
parameter nobody binds) gives None, and rules stay silent.

``params`` binds the parameters of a method to the caller's arguments (one level), so a rule can
ask about ``self.transformer(self.embed(src), ...)`` inside ``forward`` for one call site of the
model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Dict, List, Optional

import libcst as cst

from mllint.analysis.batches import Batches, Provenance
from mllint.analysis.dataflow import Assignments
from mllint.analysis.instances import UNKNOWN, Instances, constructor_of
from mllint.analysis.masks import AttentionSlots, TorchCall
from mllint.analysis.names import string_value
from mllint.analysis.positional import Positional

if TYPE_CHECKING:
    from mllint.core.context import Context

BATCH_FIRST = "batch-first"
SEQ_FIRST = "seq-first"

PAD_SEQUENCE = "torch.nn.utils.rnn.pad_sequence"
DATALOADER = "torch.utils.data.DataLoader"
_KEEP_METHODS = frozenset({"to", "cuda", "cpu", "long", "int", "float", "half", "bfloat16", "bool",
                           "detach", "clone", "contiguous", "type", "type_as", "requires_grad_"})
_TRANSPOSES = frozenset({"transpose", "swapaxes", "swapdims"})
# Modules that keep the leading dims of their input (token ids (B, T) -> (B, T, E)).
_KEEP_MODULES = frozenset({"torch.nn.Embedding", "torch.nn.Dropout", "torch.nn.LayerNorm", "torch.nn.Linear"})
_TRANSFORMERS = frozenset({"torch.nn.Transformer", "torch.nn.TransformerEncoder", "torch.nn.TransformerDecoder",
                           "torch.nn.TransformerEncoderLayer", "torch.nn.TransformerDecoderLayer"})
_HF_KEYS = frozenset({"input_ids", "attention_mask", "labels", "decoder_input_ids", "token_type_ids"})
_ITER_WRAPPERS = frozenset({"enumerate", "tqdm", "iter", "tqdm.tqdm", "tqdm.auto.tqdm"})


@dataclass(frozen=True)
class Layout:
    kind: str  # BATCH_FIRST or SEQ_FIRST
    reason: str  # the evidence, in words
    node: cst.CSTNode  # the evidence
    transposed: bool = False  # flipped by a transpose on the way


def _flip(layout: Optional[Layout]) -> Optional[Layout]:
    if layout is None:
        return None
    kind = SEQ_FIRST if layout.kind == BATCH_FIRST else BATCH_FIRST
    return replace(layout, kind=kind, transposed=not layout.transposed)


def _int(expr: cst.BaseExpression) -> Optional[int]:
    if isinstance(expr, cst.Integer):
        return int(expr.value, 0)
    if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.Minus) \
            and isinstance(expr.expression, cst.Integer):
        return -int(expr.expression.value, 0)
    return None


def _swaps_first_two(dims: List[cst.BaseExpression]) -> Optional[bool]:
    """For ``transpose(a, b)``: True when it swaps dims 0 and 1, False when it leaves both."""
    ints = [_int(d) for d in dims]
    if len(ints) != 2 or None in ints:
        return None
    if sorted(ints) == [0, 1]:  # type: ignore[type-var]
        return True
    return False if all(i >= 2 or i < -2 for i in ints) else None  # type: ignore[operator]


class Layouts:
    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self.flow = ctx.get(Assignments)
        self.instances = ctx.get(Instances)
        self.functions: Dict[str, cst.FunctionDef] = {
            s.name.value: s for s in ctx.module.body if isinstance(s, cst.FunctionDef)}
        self._active: set = set()

    # -- tuple unpacking -------------------------------------------------------------------------
    def unpacked(self, name: cst.Name) -> Optional[cst.BaseExpression]:
        """The expression bound to ``name`` by the tuple unpacking that last bound it: an element
        of the tuple a module-level helper returns (``a, b = helper(...)``), or of the tuple a
        ``DataLoader``'s ``collate_fn`` returns (``for a, b in loader``). None otherwise."""
        if self.flow.reaching(name) is not None:
            return None
        at = self.ctx.order(name)
        scope = self.ctx.enclosing(name, cst.FunctionDef)
        best = None
        for node in (*self.ctx.nodes(cst.Assign), *self.ctx.nodes(cst.For)):
            if self.ctx.enclosing(node, cst.FunctionDef) is not scope:
                continue
            targets = [t.target for t in node.targets] if isinstance(node, cst.Assign) else [node.target]
            bound_at = self.ctx.end_order(node) if isinstance(node, cst.Assign) else self.ctx.end_order(node.target)
            inside_loop = isinstance(node, cst.For) and self.ctx.order(node) < at <= self.ctx.end_order(node)
            if (isinstance(node, cst.Assign) and bound_at >= at) or (isinstance(node, cst.For) and not inside_loop):
                continue
            for target in targets:
                if any(n.value == name.value for n in _names(target)) and (best is None or bound_at > best[0]):
                    best = (bound_at, node, target)
        if best is None:
            return None
        _, node, target = best
        latest = max((end for end, _ in self.flow.by_scope.get((scope or self.ctx.module, name.value), [])
                      if end < at), default=None)
        if latest is not None and latest > best[0]:
            return None  # re-bound since
        if isinstance(node, cst.Assign):
            return self._element(node.value, target, name.value)
        iterable = node.iter
        while isinstance(iterable, cst.Call) and iterable.args and (
                self.ctx.code(iterable.func) in _ITER_WRAPPERS):
            if self.ctx.code(iterable.func) == "enumerate" and isinstance(target, cst.Tuple) \
                    and len(target.elements) == 2:
                target = target.elements[1].value
            iterable = iterable.args[0].value
        loader = self.flow.reaching(iterable) if isinstance(iterable, cst.Name) else iterable
        if not isinstance(loader, cst.Call) or not self.ctx.names.matches(loader.func, DATALOADER):
            return None
        collate = next((a.value for a in loader.args if a.keyword is not None
                        and a.keyword.value == "collate_fn"), None)
        if not isinstance(collate, cst.Name) or collate.value not in self.functions:
            return None
        returned = self._returned(self.functions[collate.value])
        return None if returned is None else _pick(returned, target, name.value)

    def _element(self, value: cst.BaseExpression, target: cst.BaseExpression,
                 name: str) -> Optional[cst.BaseExpression]:
        if isinstance(value, cst.Tuple):
            return _pick(value, target, name)
        if isinstance(value, cst.Call) and isinstance(value.func, cst.Name) \
                and value.func.value in self.functions and not self.ctx.names.resolve(value.func):
            returned = self._returned(self.functions[value.func.value])
            return None if returned is None else _pick(returned, target, name)
        return None

    def _returned(self, function: cst.FunctionDef) -> Optional[cst.BaseExpression]:
        returns = [r for r in self.ctx.nodes(cst.Return)
                   if self.ctx.enclosing(r, cst.FunctionDef) is function and r.value is not None]
        return returns[0].value if len(returns) == 1 else None

    # -- layouts -----------------------------------------------------------------------------------
    def layout(self, expr: cst.BaseExpression,
               params: Optional[Dict[str, cst.BaseExpression]] = None) -> Optional[Layout]:
        """The proven layout of ``expr`` (see the module docstring), or None."""
        key = (id(expr), id(params))
        if key in self._active or len(self._active) > 40:
            return None
        self._active.add(key)
        try:
            return self._layout(expr, params or {})
        finally:
            self._active.discard(key)

    def _layout(self, expr: cst.BaseExpression, params: Dict[str, cst.BaseExpression]) -> Optional[Layout]:
        if isinstance(expr, cst.Name):
            return self._name(expr, params)
        if isinstance(expr, cst.Attribute):
            if expr.attr.value == "T":
                return _flip(self.layout(expr.value, params))
            if expr.attr.value in _HF_KEYS:
                return self._encoding(expr.value, expr)
            return None
        if isinstance(expr, cst.Subscript):
            key = string_value(expr.slice[0].slice.value) if len(expr.slice) == 1 and isinstance(
                expr.slice[0].slice, cst.Index) else None
            if key is not None:
                return self._encoding(expr.value, expr) if key in _HF_KEYS else None
            if all(isinstance(e.slice, cst.Slice) for e in expr.slice):
                return self.layout(expr.value, params)
            return None
        if isinstance(expr, cst.BinaryOperation) and isinstance(
                expr.operator, (cst.Add, cst.Subtract, cst.Multiply, cst.Divide)):
            sides = (self.layout(expr.left, params), self.layout(expr.right, params))
            found = {lay.kind: lay for lay in sides if lay}
            return next(iter(found.values())) if len(found) == 1 else None
        if isinstance(expr, cst.Call):
            return self._call(expr, params)
        return None

    def _name(self, name: cst.Name, params: Dict[str, cst.BaseExpression]) -> Optional[Layout]:
        value = self.flow.reaching(name)
        if value is not None:
            return self.layout(value, params)
        element = self.unpacked(name)
        if element is not None:
            return self.layout(element)
        if name.value in params and not self.flow.is_bound_locally(name):
            return self.layout(params[name.value])
        return None

    def _encoding(self, encoding: cst.BaseExpression, node: cst.CSTNode) -> Optional[Layout]:
        """``enc["input_ids"]``: batch-first when ``enc`` is a tokenizer's tensors or a collated batch."""
        origin = self.ctx.get(Batches).origin(encoding)
        if origin.provenance is Provenance.LOADER:
            return Layout(BATCH_FIRST, f"`{self.ctx.code(node)}` of a collated batch, (batch, seq)", node)
        call = origin.node
        if isinstance(call, cst.Call) and origin.tokenizer is not None and any(
                a.keyword is not None and a.keyword.value == "return_tensors"
                and string_value(a.value) == "pt" for a in call.args):
            return Layout(BATCH_FIRST, f"`{self.ctx.code(node)}` of a tokenizer call, (batch, seq)", node)
        return None

    def _call(self, call: cst.Call, params: Dict[str, cst.BaseExpression]) -> Optional[Layout]:
        func = call.func
        names = self.ctx.names.resolve(func)
        positional = [a.value for a in call.args if a.keyword is None and not a.star]
        if PAD_SEQUENCE in names:
            batch_first = next((a.value for a in call.args if a.keyword is not None
                                and a.keyword.value == "batch_first"), positional[1] if len(positional) > 1 else None)
            if any(a.star for a in call.args):
                return None
            if batch_first is None or (isinstance(batch_first, cst.Name) and batch_first.value == "False"):
                return Layout(SEQ_FIRST, "`pad_sequence(...)` without `batch_first=True`, (seq, batch)", call)
            if isinstance(batch_first, cst.Name) and batch_first.value == "True":
                return Layout(BATCH_FIRST, "`pad_sequence(..., batch_first=True)`, (batch, seq)", call)
            return None
        if "torch.transpose" in names and len(positional) == 3:
            swaps = _swaps_first_two(positional[1:])
            inner = self.layout(positional[0], params)
            return _flip(inner) if swaps else inner if swaps is False else None
        if isinstance(func, cst.Attribute) and not names:
            method = func.attr.value
            if method in _KEEP_METHODS:
                return self.layout(func.value, params)
            if method in _TRANSPOSES:
                swaps = _swaps_first_two(positional)
                inner = self.layout(func.value, params)
                return _flip(inner) if swaps else inner if swaps is False else None
            if method == "t" and not positional:
                return _flip(self.layout(func.value, params))
            if method == "permute" and len(positional) >= 2:
                first = [_int(d) for d in positional[:2]]
                if first == [1, 0]:
                    return _flip(self.layout(func.value, params))
                if first == [0, 1]:
                    return self.layout(func.value, params)
                return None
        return self._module_call(call, params)

    def _module_call(self, call: cst.Call, params: Dict[str, cst.BaseExpression]) -> Optional[Layout]:
        receiver = call.func
        if isinstance(receiver, cst.Attribute) and receiver.attr.value == "forward":
            receiver = receiver.value
        if not isinstance(receiver, (cst.Name, cst.Attribute)):
            return None
        kinds = self.instances.kinds(receiver, call)
        if kinds and UNKNOWN not in kinds and kinds <= _TRANSFORMERS:
            batch_first = self.ctx.get(AttentionSlots).batch_first(
                TorchCall(call, next(iter(kinds)), None)) if len(kinds) == 1 else None  # type: ignore[arg-type]
            if batch_first is None:
                return None
            return Layout(BATCH_FIRST if batch_first else SEQ_FIRST,
                          f"the output of `{self.ctx.code(receiver)}` (batch_first={batch_first})", call)
        first = call.args[0] if call.args else None
        if first is None or first.keyword is not None or first.star:
            return None
        if kinds and UNKNOWN not in kinds and kinds <= _KEEP_MODULES:
            return self.layout(first.value, params)
        if self._keeps_layout(receiver, call):
            return self.layout(first.value, params)
        return None

    def _keeps_layout(self, receiver: cst.BaseExpression, call: cst.Call) -> bool:
        """A local token-embedding or positional-encoding module (``self.tok_emb = TokenEmbedding(...)``)."""
        ctor = constructor_of(self.instances, receiver, call)
        if ctor is None:
            return False
        positional = self.ctx.get(Positional)
        if positional.value_evidence(ctor) is not None:
            return True
        return positional.module_category(ctor) == "tokens"


def _names(target: cst.BaseExpression):
    if isinstance(target, cst.Name):
        yield target
    elif isinstance(target, (cst.Tuple, cst.List)):
        for element in target.elements:
            yield from _names(element.value)


def _pick(value: cst.BaseExpression, target: cst.BaseExpression, name: str) -> Optional[cst.BaseExpression]:
    """The element of the tuple ``value`` that ``name`` in the (nested) tuple ``target`` receives."""
    if isinstance(target, cst.Name):
        return value if target.value == name else None
    if not isinstance(target, (cst.Tuple, cst.List)) or not isinstance(value, (cst.Tuple, cst.List)):
        return None
    if len(target.elements) != len(value.elements) or any(
            isinstance(e, cst.StarredElement) for e in (*target.elements, *value.elements)):
        return None
    for t, v in zip(target.elements, value.elements):
        found = _pick(v.value, t.value, name)
        if found is not None:
            return found
    return None
