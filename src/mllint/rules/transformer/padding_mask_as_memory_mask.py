from __future__ import annotations

import re
from typing import Iterator, Optional, Tuple

import libcst as cst

from mllint.analysis.dataflow import Assignments, strip_transparent
from mllint.analysis.names import dotted
from mllint.analysis.signatures import Binding
from mllint.analysis.torch_modules import decoder_call
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Fix, Severity
from mllint.core.rule import Invalid, Rule, Valid

# A name that says "key padding" (src_padding_mask, pad_mask, enc_attention_mask, ...) ...
_PADDING_NAME = re.compile(r"(^|_)(pad|padding)(_|$)|key_padding|attention_mask", re.IGNORECASE)
# ... unless it also says it is an attention-shaped mask built from one.
_SHAPED_NAME = re.compile(r"3d|expand|attn|causal|square|subsequent|tri[lu]?(_|$)|look_?ahead", re.IGNORECASE)
# Calls that make an attention-shaped mask out of a padding mask: legitimate for memory_mask.
_RESHAPING = frozenset({"unsqueeze", "expand", "expand_as", "repeat", "repeat_interleave", "view",
                        "reshape", "tile", "broadcast_to"})


def _last_name(expr: cst.BaseExpression) -> Optional[str]:
    if isinstance(expr, cst.Subscript) and len(expr.slice) == 1:
        index = expr.slice[0].slice
        if isinstance(index, cst.Index) and isinstance(index.value, cst.SimpleString):
            value = index.value.evaluated_value
            return value if isinstance(value, str) else None
    path = dotted(expr)
    return path.rsplit(".", 1)[-1] if path else None


def _compares_with_pad(expr: cst.BaseExpression) -> Optional[str]:
    """``x == pad_idx``, ``x.eq(PAD)``, ``x != pad``, ``x.ne(pad)`` -> the operator used."""
    if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.BitInvert):
        inner = _compares_with_pad(strip_transparent(expr.expression))
        return None if inner is None else {"==": "!=", "!=": "=="}[inner]
    if isinstance(expr, cst.Comparison) and len(expr.comparisons) == 1:
        target = expr.comparisons[0]
        operands = (expr.left, target.comparator)
        op = "==" if isinstance(target.operator, cst.Equal) else "!=" if isinstance(
            target.operator, cst.NotEqual) else None
    elif isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute) \
            and expr.func.attr.value in ("eq", "ne") and len(expr.args) == 1:
        operands = (expr.func.value, expr.args[0].value)
        op = "==" if expr.func.attr.value == "eq" else "!="
    else:
        return None
    if op is None:
        return None
    for operand in operands:
        name = _last_name(strip_transparent(operand))
        if name and re.search(r"pad", name, re.IGNORECASE):
            return op
    return None


class PaddingMaskAsMemoryMask(Rule):
    """## What it does
    Checks for a key-padding mask passed as `memory_mask` (by keyword or by position) to an
    `nn.Transformer`, `nn.TransformerDecoder` or `nn.TransformerDecoderLayer`. A mask counts as
    a key-padding mask when it is built by comparing with the pad index (`src == pad_idx`,
    `src.eq(PAD)`, `~(src != pad)`), when it is a Hugging Face `attention_mask`, when its name
    says so (`src_padding_mask`, `pad_mask`, `batch["src_key_padding_mask"]`), or when the same
    value is also passed as a `*_key_padding_mask`. Module instances are resolved through
    imports and aliases (`from torch import nn`, `from torch.nn import Transformer as T`),
    through `self.` attributes assigned in `__init__`, and through local variables.

    ## Why is this bad?
    `memory_mask` is an *attention* mask over (target, source) positions: shape `(T, S)` or
    `(N * num_heads, T, S)`. The source padding mask is `(N, S)` and belongs in
    `memory_key_padding_mask` (torch `nn/modules/transformer.py`, `Transformer.forward`
    docstring, Shape section; the same in every torch 2.x release). Passed as `memory_mask`,
    multi-head attention rejects it ("The shape of the 2D attn_mask is ..., but should be
    (T, S)", `nn/functional.py`, `multi_head_attention_forward`) unless the batch size happens to
    equal the target length, e.g. batch size 1 during greedy decoding of one token, or a batch
    of 32 target tokens at batch size 32. Then it is silently applied row-wise along the wrong
    axis: target position *t* is kept from the source positions where example *t* is padded,
    and padded source positions stay visible.

    Masks expanded to an attention shape (`.unsqueeze`, `.expand`, `.repeat_interleave`,
    `.view`) are left alone: building a `(N * num_heads, T, S)` memory mask from a padding mask
    is legitimate. Decoders from other libraries are left alone too.

    ## Example
    ```python
    out = self.transformer(src, tgt, tgt_mask=tgt_mask, memory_mask=src_padding_mask)
    ```

    ## Use instead
    ```python
    out = self.transformer(src, tgt, tgt_mask=tgt_mask, memory_key_padding_mask=src_padding_mask)
    ```

    ## Fix safety
    The fix renames the keyword to `memory_key_padding_mask` (or turns the last positional
    argument into that keyword) when that keyword is not passed already. It is unsafe because it
    changes what the model attends to, which is its purpose. When the mask has the Hugging Face
    polarity (`attention_mask`, `!= pad`: True/1 = keep), the rename alone would ignore the
    *real* tokens, so the fix is only displayed and the help says to invert the mask.

    ## References
    - torch `nn/modules/transformer.py`, `Transformer.forward` and `TransformerDecoder.forward`
    - torch `nn/functional.py`, `multi_head_attention_forward` (2-D `attn_mask` shape check)
    - https://pytorch.org/docs/stable/generated/torch.nn.Transformer.html
    """

    code = "MLL302"
    name = "padding-mask-as-memory-mask"
    summary = "key-padding mask passed as `memory_mask` of a torch transformer decoder"
    severity = Severity.ERROR
    tags = ("correctness", "torch")
    triggers = (("memory_mask", "Transformer"),)
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (
        ("import:torch",),
        ("name:Transformer", "name:TransformerDecoder", "name:TransformerDecoderLayer"),
    )
    premise = {"torch": ">=1.2"}
    VALID = (
        Valid("""
            import torch.nn as nn
            class Model(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.transformer = nn.Transformer(d_model=512)
                def forward(self, src, tgt, src_padding_mask, tgt_mask):
                    return self.transformer(src, tgt, tgt_mask=tgt_mask,
                                            memory_key_padding_mask=src_padding_mask)
            """),
        # An attention-shaped memory mask built from the padding mask.
        Valid("""
            from torch import nn
            class Model(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(512, 8), 6)
                def forward(self, tgt, memory, src_pad_mask):
                    mask = src_pad_mask.unsqueeze(1).expand(-1, tgt.size(0), -1).repeat_interleave(8, 0)
                    return self.decoder(tgt, memory, memory_mask=mask)
            """),
        # A generic name says nothing about padding.
        Valid("""
            import torch
            transformer = torch.nn.Transformer()
            out = transformer(src, tgt, None, tgt_mask, memory_mask)
            """),
        # Not a torch decoder: a home-grown module with its own meaning of memory_mask.
        Valid("""
            from mymodels import Decoder
            class Model:
                def __init__(self):
                    self.decoder = Decoder()
                def forward(self, tgt, memory, src_padding_mask):
                    return self.decoder(tgt, memory, memory_mask=src_padding_mask)
            """),
        # The attribute is rebound to something unknown elsewhere: cannot tell, stay silent.
        Valid("""
            from torch import nn
            class Model(nn.Module):
                def __init__(self, custom=None):
                    self.decoder = nn.TransformerDecoder(layer, 6)
                    if custom is not None:
                        self.decoder = custom
                def forward(self, tgt, memory, pad_mask):
                    return self.decoder(tgt, memory, memory_mask=pad_mask)
            """),
        # The pad mask goes to the key-padding slot; memory_mask gets a causal-style mask.
        Valid("""
            from torch import nn
            dec = nn.TransformerDecoderLayer(512, 8, batch_first=True)
            out = dec(tgt, memory, memory_mask=cross_attn_mask, memory_key_padding_mask=src == PAD_IDX)
            """),
    )
    INVALID = (
        Invalid(
            """
            import torch.nn as nn
            class Seq2Seq(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.transformer = nn.Transformer(d_model=512, nhead=8)
                def forward(self, src, tgt, src_padding_mask, tgt_mask):
                    return self.transformer(src, tgt, tgt_mask=tgt_mask, memory_mask=src_padding_mask)
            """,
            line=7,
            message="`src_padding_mask`",
            fix="""
            import torch.nn as nn
            class Seq2Seq(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.transformer = nn.Transformer(d_model=512, nhead=8)
                def forward(self, src, tgt, src_padding_mask, tgt_mask):
                    return self.transformer(src, tgt, tgt_mask=tgt_mask, memory_key_padding_mask=src_padding_mask)
            """,
            applicability=Applicability.UNSAFE,
        ),
        # Positional (5th argument of Transformer.forward), through a local, with an alias.
        Invalid(
            """
            from torch.nn import Transformer as T
            model = T()
            src_mask = (src == PAD_IDX).transpose(0, 1)
            out = model(src, tgt, None, tgt_mask, src_mask)
            """,
            line=4,
            message="it is `(src == PAD_IDX)`",
            fix="""
            from torch.nn import Transformer as T
            model = T()
            src_mask = (src == PAD_IDX).transpose(0, 1)
            out = model(src, tgt, None, tgt_mask, memory_key_padding_mask=src_mask)
            """,
            applicability=Applicability.UNSAFE,
        ),
        # The decoder of an nn.Transformer, and the same value as src_key_padding_mask.
        Invalid(
            """
            from torch import nn
            class M(nn.Module):
                def __init__(self):
                    self.t = nn.Transformer()
                def forward(self, src, tgt, mask):
                    memory = self.t.encoder(src, src_key_padding_mask=mask)
                    return self.t.decoder(tgt, memory, memory_mask=mask, memory_key_padding_mask=None)
            """,
            line=7,
            message="also passed as",
        ),
        # Hugging Face polarity: renaming alone would be wrong, so the fix is display-only.
        Invalid(
            """
            import torch
            layer = torch.nn.TransformerDecoderLayer(256, 4, batch_first=True)
            out = layer(x, enc, memory_mask=batch["attention_mask"])
            """,
            line=3,
            message="True/1 means keep",
            applicability=Applicability.DISPLAY_ONLY,
        ),
        # Layers in a ModuleList.
        Invalid(
            """
            from torch import nn
            class Dec(nn.Module):
                def __init__(self):
                    self.layers = nn.ModuleList([nn.TransformerDecoderLayer(512, 8) for _ in range(6)])
                def forward(self, x, memory, src):
                    pad = src.eq(self.pad_idx)
                    for layer in self.layers:
                        x = layer(x, memory, memory_mask=pad)
                    return x
            """,
            line=8,
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        flow = ctx.get(Assignments)
        for call in ctx.nodes(cst.Call):
            found = decoder_call(ctx, call)
            if found is None:
                continue
            binding = found.binding
            value = binding.value("memory_mask")
            if value is None:
                continue
            evidence = self._evidence(value, binding, flow, ctx)
            if evidence is None:
                continue
            reason, hf_polarity = evidence
            cls = found.label
            mask = ctx.code(value)
            help_text = ("Pass it as `memory_key_padding_mask` (shape (N, S), True = padding)"
                         + (f", inverted: `memory_key_padding_mask=({mask}) == 0`" if hf_polarity else ""))
            yield ctx.report(
                binding.args["memory_mask"],
                f"`{mask}` is a key-padding mask ({reason}) but is passed as `memory_mask` of "
                f"`{cls}`, which takes a (T, S) attention mask: it fails on shape, or, when the batch "
                f"size equals the target length, silently masks the wrong axis",
                fix=self._fix(ctx, call, binding, hf_polarity),
                help=help_text,
            )

    def _evidence(self, value: cst.BaseExpression, binding: Binding, flow: Assignments,
                  ctx: Context) -> Optional[Tuple[str, bool]]:
        """Why ``value`` is a key-padding mask, and whether it has the True=keep polarity."""
        text = ctx.code(strip_transparent(value))
        for keyword, other in self._key_padding_arguments(value, ctx):
            if text != "None" and ctx.code(strip_transparent(other)) == text:
                return f"the same value is also passed as `{keyword}`", False
        named: Optional[Tuple[str, bool]] = None
        for step in flow.trace(value):
            if isinstance(step, cst.Call) and isinstance(step.func, cst.Attribute) \
                    and step.func.attr.value in _RESHAPING:
                return None
            if isinstance(step, cst.Subscript) and _last_name(step) is None:
                return None  # mask[:, None, :] and the like: reshaped
            op = _compares_with_pad(step)
            if op is not None:  # the computation is better evidence than any name
                return (f"it is `{ctx.code(step)}`, True at padding", False) if op == "==" else (
                    f"it is `{ctx.code(step)}`, True/1 at real tokens", True)
            name = _last_name(step)
            if named is None and name and _PADDING_NAME.search(name) and not _SHAPED_NAME.search(name):
                if "attention_mask" in name.lower():
                    named = "a Hugging Face `attention_mask`, where True/1 means keep", True
                else:
                    named = f"its name `{name}` says so", False
        return named

    @staticmethod
    def _key_padding_arguments(value: cst.BaseExpression, ctx: Context):
        """``(keyword, value)`` of every ``*key_padding_mask=`` argument in the same function."""
        scope = ctx.enclosing(value, cst.FunctionDef) or ctx.module
        for arg in ctx.nodes(cst.Arg):
            if arg.keyword is not None and arg.keyword.value.endswith("key_padding_mask") \
                    and (ctx.enclosing(arg, cst.FunctionDef) or ctx.module) is scope:
                yield arg.keyword.value, arg.value

    def _fix(self, ctx: Context, call: cst.Call, binding: Binding, hf_polarity: bool) -> Optional[Fix]:
        arg = binding.args["memory_mask"]
        message = "Pass the mask as `memory_key_padding_mask`"
        if binding.maybe_passed("memory_key_padding_mask"):
            return None
        if hf_polarity:
            return ctx.fix(message + " (inverted)", Applicability.DISPLAY_ONLY,
                           ctx.replace(arg, f"memory_key_padding_mask=({ctx.code(arg.value)}) == 0"))
        if arg.keyword is not None:
            return ctx.fix(message, Applicability.UNSAFE, ctx.replace(arg.keyword, "memory_key_padding_mask"))
        positional = [a for a in call.args if a.keyword is None and not a.star]
        if positional and positional[-1] is arg:
            return ctx.fix(message, Applicability.UNSAFE,
                           ctx.replace(arg.value, f"memory_key_padding_mask={ctx.code(arg.value)}"))
        return None
