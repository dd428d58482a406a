from __future__ import annotations

import re
from typing import Iterator, List, Optional, Set

import libcst as cst

from mllint.analysis.dataflow import Assignments
from mllint.analysis.instances import constructor_of
from mllint.analysis.masks import AttentionSlots, Masks, TorchCall
from mllint.analysis.names import string_value
from mllint.analysis.signatures import attention_mask_parameters
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Fix, Severity
from mllint.core.rule import Invalid, Rule, Valid

# n_heads, num_heads, nhead, heads, num_attention_heads, self.n_head, cfg.attn_heads
_HEADS = re.compile(r"^(n_?|num_?|attn_|attention_|num_attention_)?heads?$|^nheads?$", re.IGNORECASE)
# What a value keeps its meaning through on its way to the attention slot.
_PASS = frozenset({"to", "cuda", "cpu", "bool", "float", "half", "bfloat16", "masked_fill", "masked_fill_",
                   "detach", "contiguous", "clone", "type", "logical_not"})
# Evidence that a mask differs per example: built from a padding mask or token ids.
_PER_EXAMPLE = re.compile(r"pad|attention_mask|key_mask|lengths?$|lens$", re.IGNORECASE)
# Stacks take the head count from their layer.
_STACKS = {"torch.nn.TransformerEncoder": "encoder_layer", "torch.nn.TransformerDecoder": "decoder_layer"}


def _is_one(expr: cst.BaseExpression) -> bool:
    return isinstance(expr, cst.Integer) and expr.value == "1"


def _repeat_heads(call: cst.Call) -> Optional[cst.BaseExpression]:
    """``x.repeat(h, 1, 1)`` or ``x.repeat((h, 1, 1))`` -> ``h`` (not a literal 1)."""
    if not (isinstance(call.func, cst.Attribute) and call.func.attr.value == "repeat"):
        return None
    if any(a.keyword is not None or a.star for a in call.args):
        return None
    counts: List[cst.BaseExpression] = [a.value for a in call.args]
    if len(counts) == 1 and isinstance(counts[0], (cst.Tuple, cst.List)):
        elements = counts[0].elements
        if any(isinstance(e, cst.StarredElement) for e in elements):
            return None
        counts = [e.value for e in elements]
    if len(counts) != 3 or not all(_is_one(c) for c in counts[1:]) or _is_one(counts[0]):
        return None
    return counts[0]


def _last_name(expr: cst.BaseExpression) -> Optional[str]:
    if isinstance(expr, cst.Subscript) and len(expr.slice) == 1 and isinstance(expr.slice[0].slice, cst.Index):
        return string_value(expr.slice[0].slice.value)
    if isinstance(expr, cst.Attribute):
        return expr.attr.value
    return expr.value if isinstance(expr, cst.Name) else None


class MaskRepeatHeadOrder(Rule):
    """## What it does
    Checks for a per-example attention mask of shape `(N, L, S)` expanded to the
    `(N * num_heads, L, S)` layout with `.repeat(num_heads, 1, 1)` (or `.repeat((num_heads, 1,
    1))`) and passed as `attn_mask` of `nn.MultiheadAttention`, or as `src_mask`, `tgt_mask`,
    `memory_mask` or `mask` of torch's transformer modules. The repeat count must be the head
    count: named so (`num_heads`, `nhead`, `self.n_heads`) or written the same way as the
    module's `nhead`/`num_heads` constructor argument. The mask must differ per example: built
    from a padding mask, an `attention_mask` or sequence lengths.

    ## Why is this bad?
    torch lays the merged batch-and-head dimension out example-major: torch 2.13.0
    `nn/functional.py`, `multi_head_attention_forward`, splits the projected query with
    `q.view(tgt_len, bsz * num_heads, head_dim)` (so row `b * num_heads + h` is head *h* of
    example *b*), adds a 3-D `attn_mask` to those scores row by row, and on the
    scaled-dot-product path reshapes it with `attn_mask.view(bsz, num_heads, -1, src_len)`.
    `.repeat(num_heads, 1, 1)` tiles the whole batch instead, so row `h * N + b` holds example
    *b*: every head of example *b* gets the mask of some other example whenever N > 1 and
    num_heads > 1. No shape check can notice; training silently attends to the wrong padding.
    `.repeat_interleave(num_heads, dim=0)` produces the layout torch documents (`attn_mask`:
    "(N·num_heads, L, S)"). The same layout holds in every torch release that accepts 3-D masks.

    Masks that are the same for every example (a causal mask expanded from `(1, L, S)`) are
    left alone: there the order does not matter.

    ## Example
    ```python
    mask = pad_mask[:, None, :].expand(-1, tgt.size(1), -1)  # (N, L, S)
    out, _ = self.attn(x, x, x, attn_mask=mask.repeat(self.num_heads, 1, 1))
    ```

    ## Use instead
    ```python
    mask = pad_mask[:, None, :].expand(-1, tgt.size(1), -1)  # (N, L, S)
    out, _ = self.attn(x, x, x, attn_mask=mask.repeat_interleave(self.num_heads, dim=0))
    ```

    ## Fix safety
    The fix replaces `.repeat(h, 1, 1)` with `.repeat_interleave(h, dim=0)`. It is safe: both
    give the documented `(N * num_heads, L, S)` shape, and for a mask that is identical across
    examples they are the same tensor; only the pairing of heads with examples, the bug, changes.

    ## References
    - torch `nn/functional.py`, `multi_head_attention_forward` (2.13.0)
    - torch `nn/modules/activation.py`, `MultiheadAttention.forward` docstring (`attn_mask`)
    - https://pytorch.org/docs/stable/generated/torch.repeat_interleave.html
    """

    code = "MLL307"
    name = "mask-repeat-head-order"
    summary = "per-example attention mask tiled with `.repeat(num_heads, 1, 1)` instead of `repeat_interleave`"
    severity = Severity.ERROR
    tags = ("correctness", "torch")
    triggers = (("repeat",), ("Transformer", "MultiheadAttention"))
    requires = (("import:torch",), ("call:repeat",), (
        "name:Transformer", "name:TransformerEncoder", "name:TransformerDecoder", "name:TransformerEncoderLayer", "name:TransformerDecoderLayer",
        "name:MultiheadAttention"))
    premise = {"torch": ">=1.2"}
    VALID = (
        Valid("""
            import torch.nn as nn
            class Block(nn.Module):
                def __init__(self, d, num_heads):
                    super().__init__()
                    self.num_heads = num_heads
                    self.attn = nn.MultiheadAttention(d, num_heads, batch_first=True)
                def forward(self, x, pad_mask):
                    mask = pad_mask[:, None, :].expand(-1, x.size(1), -1)
                    return self.attn(x, x, x, attn_mask=mask.repeat_interleave(self.num_heads, dim=0))[0]
            """),
        # Repeated along another dimension.
        Valid("""
            import torch.nn as nn
            mha = nn.MultiheadAttention(256, 8)
            mask = (src == PAD)[:, None, :].repeat(1, T, 1)
            out, _ = mha(q, k, v, attn_mask=mask.repeat_interleave(8, 0))
            """),
        # The same mask for every example: (1, L, S) tiled, order does not matter.
        Valid("""
            import torch
            from torch import nn
            mha = nn.MultiheadAttention(256, 8, batch_first=True)
            causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
            out, _ = mha(x, x, x, attn_mask=causal.unsqueeze(0).repeat(n_heads * B, 1, 1))
            """),
        # Not fed to a torch attention module.
        Valid("""
            import torch
            from torch import nn
            mha = nn.MultiheadAttention(256, 8, batch_first=True)
            mask = pad_mask[:, None, :].repeat(num_heads, 1, 1)
            scores = my_attention(q, k, mask)
            """),
        # A repeat count that is not the head count.
        Valid("""
            from torch import nn
            mha = nn.MultiheadAttention(256, 8, batch_first=True)
            mask = pad_mask[:, None, :].expand(-1, T, -1)
            out, _ = mha(x, x, x, attn_mask=mask.repeat(beam_size, 1, 1))
            """),
    )
    INVALID = (
        Invalid(
            """
            import torch.nn as nn
            class Block(nn.Module):
                def __init__(self, d, num_heads):
                    super().__init__()
                    self.num_heads = num_heads
                    self.attn = nn.MultiheadAttention(d, num_heads, batch_first=True)
                def forward(self, x, pad_mask):
                    mask = pad_mask[:, None, :].expand(-1, x.size(1), -1)
                    return self.attn(x, x, x, attn_mask=mask.repeat(self.num_heads, 1, 1))[0]
            """,
            line=9,
            message="`mask.repeat(self.num_heads, 1, 1)`",
            fix="""
            import torch.nn as nn
            class Block(nn.Module):
                def __init__(self, d, num_heads):
                    super().__init__()
                    self.num_heads = num_heads
                    self.attn = nn.MultiheadAttention(d, num_heads, batch_first=True)
                def forward(self, x, pad_mask):
                    mask = pad_mask[:, None, :].expand(-1, x.size(1), -1)
                    return self.attn(x, x, x, attn_mask=mask.repeat_interleave(self.num_heads, dim=0))[0]
            """,
            applicability=Applicability.SAFE,
        ),
        # The literal head count of the constructor, through a local, into a decoder's memory_mask.
        Invalid(
            """
            import torch
            from torch import nn
            decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(512, 8), 6)
            src_pad = src.eq(PAD_IDX).t()
            cross = src_pad.unsqueeze(1).expand(-1, tgt.size(0), -1)
            cross = cross.repeat((8, 1, 1)).to(device)
            out = decoder(tgt_emb, memory, memory_mask=cross)
            """,
            line=6,
            message="example b",
            fix="""
            import torch
            from torch import nn
            decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(512, 8), 6)
            src_pad = src.eq(PAD_IDX).t()
            cross = src_pad.unsqueeze(1).expand(-1, tgt.size(0), -1)
            cross = cross.repeat_interleave(8, dim=0).to(device)
            out = decoder(tgt_emb, memory, memory_mask=cross)
            """,
            applicability=Applicability.SAFE,
        ),
        # Through a model's forward: the caller builds the mask.
        Invalid(
            """
            import torch
            from torch import nn
            class Encoder(nn.Module):
                def __init__(self, nhead):
                    super().__init__()
                    self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(256, nhead, batch_first=True), 4)
                def forward(self, x, mask):
                    return self.enc(x, mask=mask)
            model = Encoder(NHEAD)
            for batch in loader:
                keep = batch["attention_mask"]
                mask = (keep[:, None, :] == 0).expand(-1, keep.size(1), -1)
                y = model(batch["x"], mask.repeat(NHEAD, 1, 1))
            """,
            line=13,
            message="through `Encoder.forward`",
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        slots = ctx.get(AttentionSlots)
        reported: Set[int] = set()
        for torch_call in slots.torch_calls:
            for param in attention_mask_parameters(torch_call.callee):
                arg = torch_call.binding.args.get(param)
                if arg is None:
                    continue
                for repeat, heads in self._repeats(ctx, arg.value, torch_call):
                    if id(repeat) not in reported:
                        reported.add(id(repeat))
                        yield self._report(ctx, repeat, heads, param, torch_call, None)
        for call in ctx.nodes(cst.Call):
            local = slots.local_call(call)
            if local is None or local.binding.opaque:
                continue
            params = {p.name.value for p in local.method.params.params}
            for torch_call in slots.inside(local.method):
                for param in attention_mask_parameters(torch_call.callee):
                    arg = torch_call.binding.args.get(param)
                    name = arg.value if arg is not None else None
                    if not (isinstance(name, cst.Name) and name.value in params
                            and ctx.get(Assignments).reaching(name) is None and name.value in local.binding.args):
                        continue
                    outer = local.binding.args[name.value].value
                    via = f"{local.cls.name.value}.{local.method.name.value}"
                    for repeat, heads in self._repeats(ctx, outer, torch_call):
                        if id(repeat) not in reported:
                            reported.add(id(repeat))
                            yield self._report(ctx, repeat, heads, param, torch_call, via)

    def _repeats(self, ctx: Context, expr: cst.BaseExpression, torch_call: TorchCall):
        """``(repeat call, head count)`` for a ``.repeat(h, 1, 1)`` the value of ``expr`` is."""
        flow = ctx.get(Assignments)
        current: Optional[cst.BaseExpression] = expr
        for _ in range(10):
            if isinstance(current, cst.Name):
                current = flow.reaching(current)
            elif isinstance(current, cst.UnaryOperation) and isinstance(current.operator, cst.BitInvert):
                current = current.expression
            elif isinstance(current, cst.Call) and isinstance(current.func, cst.Attribute):
                heads = _repeat_heads(current)
                if heads is not None:
                    if self._is_head_count(ctx, heads, torch_call) and self._per_example(ctx, current.func.value):
                        yield current, heads
                    return
                if current.func.attr.value not in _PASS:
                    return
                current = current.func.value
            else:
                return

    def _is_head_count(self, ctx: Context, heads: cst.BaseExpression, torch_call: TorchCall) -> bool:
        name = _last_name(heads)
        if name is not None and _HEADS.search(name):
            return True
        declared = self._declared_heads(ctx, torch_call)
        return declared is not None and ctx.code(declared) == ctx.code(heads)

    @staticmethod
    def _declared_heads(ctx: Context, torch_call: TorchCall) -> Optional[cst.BaseExpression]:
        """The ``nhead``/``num_heads`` argument of the module's constructor (the layer's for a stack)."""
        slots = ctx.get(AttentionSlots)
        receiver = torch_call.call.func
        if isinstance(receiver, cst.Attribute) and receiver.attr.value == "forward":
            receiver = receiver.value
        ctor = constructor_of(slots.instances, receiver, torch_call.call)
        kind = torch_call.callee
        if ctor is not None and kind in _STACKS:
            layer = next((a.value for a in ctor.args if a.keyword is not None
                          and a.keyword.value == _STACKS[kind]), ctor.args[0].value if ctor.args else None)
            ctor = constructor_of(slots.instances, layer, ctor) if layer is not None else None
        if ctor is None or any(a.star for a in ctor.args):
            return None
        for position, arg in enumerate(ctor.args):
            if (arg.keyword is None and position == 1) or (
                    arg.keyword is not None and arg.keyword.value in ("nhead", "num_heads")):
                return arg.value
        return None

    @staticmethod
    def _per_example(ctx: Context, mask: cst.BaseExpression) -> bool:
        """The mask is built from something that differs per example (and is no square pattern)."""
        if ctx.get(Masks).evaluate(mask) is not None:
            return False
        for node in ctx.get(Assignments).derivation(mask):
            name = _last_name(node) if isinstance(node, (cst.Name, cst.Attribute, cst.Subscript)) else None
            if name and _PER_EXAMPLE.search(name):
                return True
        return False

    def _report(self, ctx: Context, repeat: cst.Call, heads: cst.BaseExpression, param: str,
                torch_call: TorchCall, via: Optional[str]) -> Diagnostic:
        callee = torch_call.callee.replace("torch.nn.", "nn.")
        where = f" through `{via}`" if via else ""
        message = (f"`{ctx.code(repeat)}` tiles the whole batch once per head, but `{param}` of `{callee}`{where} "
                   f"is read as (N * num_heads, L, S) with row b * num_heads + h belonging to example b: "
                   f"each head gets another example's mask")
        return ctx.report(repeat, message, fix=self._fix(ctx, repeat, heads),
                          help="Use `.repeat_interleave(num_heads, dim=0)`")

    @staticmethod
    def _fix(ctx: Context, repeat: cst.Call, heads: cst.BaseExpression) -> Fix:
        receiver = repeat.func.value  # type: ignore[attr-defined]
        return ctx.fix("Use `repeat_interleave(..., dim=0)`", Applicability.SAFE,
                       ctx.replace(repeat, f"{ctx.code(receiver)}.repeat_interleave({ctx.code(heads)}, dim=0)"))
