from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Dict, Iterator, Optional, Set

import libcst as cst

from mllint.analysis.dataflow import Assignments
from mllint.analysis.layouts import Layouts
from mllint.analysis.masks import AttentionSlots, TorchCall
from mllint.analysis.names import string_value
from mllint.analysis.signatures import key_padding_parameters
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Fix, Severity
from mllint.core.rule import Invalid, Rule, Valid

# The key-padding slots come from the torch forward signatures (analysis.signatures);
# F.scaled_dot_product_attention has none (and the opposite bool polarity).
_PAD = re.compile(r"pad", re.IGNORECASE)
_HF_MASK = re.compile(r"(^|_)attention_mask$")
_KEEP = frozenset({"cuda", "cpu", "detach", "clone", "contiguous", "transpose", "t", "permute", "swapaxes"})
_INTEGER = frozenset({"long", "int", "byte", "short"})
_FLOAT_DTYPES = frozenset({"torch.float", "torch.float32", "torch.float16", "torch.half", "torch.bfloat16",
                           "torch.float64", "torch.double"})
_SAME_IF = {cst.Equal: (1,), cst.NotEqual: (0,), cst.GreaterThan: (0,), cst.GreaterThanEqual: (1,)}
_FLIP_IF = {cst.Equal: (0,), cst.NotEqual: (1,), cst.LessThan: (1,), cst.LessThanEqual: (0,)}


@dataclass(frozen=True)
class Polarity:
    keep: bool  # True/1 marks the tokens to attend to (Hugging Face's convention)
    evidence: cst.CSTNode  # the pad comparison or the `attention_mask` read that decides it
    reason: str
    is_bool: bool  # known to be a bool tensor
    flippable: bool  # `evidence` is a pad comparison that alone decides the polarity
    param: Optional[str] = None  # the method parameter it came through (one level)

    def flipped(self) -> "Polarity":
        return replace(self, keep=not self.keep)


def _last_name(expr: cst.BaseExpression) -> Optional[str]:
    if isinstance(expr, cst.Subscript) and len(expr.slice) == 1 and isinstance(expr.slice[0].slice, cst.Index):
        return string_value(expr.slice[0].slice.value)
    if isinstance(expr, cst.Attribute):
        return expr.attr.value
    return expr.value if isinstance(expr, cst.Name) else None


def _literal(expr: cst.BaseExpression) -> Optional[int]:
    if isinstance(expr, cst.Integer):
        return int(expr.value, 0)
    if isinstance(expr, cst.Float) and float(expr.value) in (0.0, 1.0):
        return int(float(expr.value))
    if isinstance(expr, cst.Name) and expr.value in ("True", "False"):
        return int(expr.value == "True")
    return None


class _Evaluator:
    """The polarity of a key-padding mask expression (None when it cannot be told)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.flow = ctx.get(Assignments)
        self.layouts = ctx.get(Layouts)

    def polarity(self, expr: cst.BaseExpression, params: Optional[Dict[str, cst.BaseExpression]] = None,
                 depth: int = 0) -> Optional[Polarity]:
        if depth > 12:
            return None
        params = params or {}
        nxt = depth + 1
        if isinstance(expr, cst.Name):
            value = self.flow.reaching(expr) or self.layouts.unpacked(expr)
            if value is not None:
                return self.polarity(value, params, nxt)
            if expr.value in params and not self.flow.is_bound_locally(expr):
                found = self.polarity(params[expr.value], None, nxt)
                return None if found is None else replace(found, param=expr.value, flippable=False)
            return None
        if isinstance(expr, (cst.Attribute, cst.Subscript)):
            name = _last_name(expr)
            base = expr.value
            if name and _HF_MASK.search(name) and not (isinstance(base, cst.Name) and base.value == "self"):
                return Polarity(True, expr, f"`{self.ctx.code(expr)}` is a Hugging Face attention mask, "
                                            "1 at real tokens", False, False)
            if isinstance(expr, cst.Attribute) and expr.attr.value == "T":
                return self.polarity(base, params, nxt)
            if isinstance(expr, cst.Subscript) and all(isinstance(e.slice, cst.Slice) for e in expr.slice):
                return self.polarity(base, params, nxt)
            return None
        if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.BitInvert):
            inner = self.polarity(expr.expression, params, nxt)
            return None if inner is None or not inner.is_bool else inner.flipped()
        if isinstance(expr, cst.BinaryOperation):
            return self._binary(expr, params, nxt)
        if isinstance(expr, cst.Comparison) and len(expr.comparisons) == 1:
            target = expr.comparisons[0]
            return self._compare(expr, expr.left, type(target.operator), target.comparator, params, nxt)
        if isinstance(expr, cst.Call):
            return self._call(expr, params, nxt)
        return None

    def _binary(self, expr: cst.BinaryOperation, params, depth) -> Optional[Polarity]:
        if isinstance(expr.operator, cst.Subtract) and _literal(expr.left) == 1:
            inner = self.polarity(expr.right, params, depth)  # 1 - mask
            return None if inner is None else replace(inner.flipped(), is_bool=False, flippable=False)
        if isinstance(expr.operator, (cst.BitAnd, cst.BitOr)):
            left, right = self.polarity(expr.left, params, depth), self.polarity(expr.right, params, depth)
            if left is not None and right is not None and left.keep == right.keep and left.is_bool and right.is_bool:
                return replace(left, flippable=False)
        return None

    def _compare(self, node, left, op, right, params, depth) -> Optional[Polarity]:
        for operand, other in ((left, right), (right, left)):
            name = _last_name(operand)
            if name and _PAD.search(name) and op in (cst.Equal, cst.NotEqual):
                keep = op is cst.NotEqual
                word = "!=" if keep else "=="
                return Polarity(keep, node, f"`{self.ctx.code(node)}` compares with the pad id ({word})",
                                True, True)
        value = _literal(right)
        if value is None:
            return None
        inner = self.polarity(left, params, depth)
        if inner is None:
            return None
        if value in _SAME_IF.get(op, ()):
            return replace(inner, is_bool=True, flippable=False)
        if value in _FLIP_IF.get(op, ()):
            return replace(inner.flipped(), is_bool=True, flippable=False)
        return None

    def _call(self, call: cst.Call, params, depth) -> Optional[Polarity]:
        names = self.ctx.names.resolve(call.func)
        args = [a.value for a in call.args if a.keyword is None and not a.star]
        if any(a.star for a in call.args):
            return None
        if names & {"torch.eq", "torch.ne"} and len(args) == 2:
            op = cst.Equal if "torch.eq" in names else cst.NotEqual
            return self._compare(call, args[0], op, args[1], params, depth)
        if "torch.logical_not" in names and len(args) == 1:
            inner = self.polarity(args[0], params, depth)
            return None if inner is None else replace(inner.flipped(), is_bool=True)
        if names or not isinstance(call.func, cst.Attribute):
            return None
        method, receiver = call.func.attr.value, call.func.value
        if method in ("eq", "ne") and len(args) == 1:
            return self._compare(call, receiver, cst.Equal if method == "eq" else cst.NotEqual, args[0], params, depth)
        inner = self.polarity(receiver, params, depth)
        if inner is None:
            return None
        if method in ("logical_not", "logical_not_"):
            return replace(inner.flipped(), is_bool=True)
        if method == "bool":
            return replace(inner, is_bool=True)
        if method in _INTEGER:
            return replace(inner, is_bool=False)
        if method in _KEEP:
            return inner
        if method in ("to", "type"):
            dtypes = {n for a in call.args for n in self.ctx.names.resolve(a.value)}
            if dtypes & _FLOAT_DTYPES:
                return None  # an additive float mask: another bug
            return replace(inner, is_bool=True) if "torch.bool" in dtypes else inner
        return None


class InvertedKeyPaddingMask(Rule):
    """## What it does
    Checks for a key-padding mask with the Hugging Face polarity (True/1 at the real tokens)
    passed to a torch transformer module or `nn.MultiheadAttention` as `src_key_padding_mask`,
    `tgt_key_padding_mask`, `memory_key_padding_mask` or `key_padding_mask` (by keyword or by
    position). The polarity is read from how the mask is built: `src != pad_idx`,
    `src.ne(PAD)`, a tokenizer's or collated batch's `attention_mask` (also through `.bool()`,
    `.to(device)`, `.transpose(0, 1)`, `1 - m`, `~m`, `m == 0` and local assignments, a helper
    such as `create_mask(...)` returning a tuple, and one level of a local model's `forward`).

    ## Why is this bad?
    For torch's modules a `True` in a bool key-padding mask means *ignore this key*
    (`MultiheadAttention.forward` docstring: "a ``True`` value indicates that the corresponding
    ``key`` value will be ignored"). torch 2.13.0 `nn/functional.py`, `_canonical_mask`, turns a
    bool mask into `-inf` where it is True, and `multi_head_attention_forward` adds it to the
    attention scores. A mask that is True at the real tokens therefore lets every query attend
    only to the padding, and a sequence without padding is masked entirely (NaN outputs). An
    integer `attention_mask` passed as it is fails instead: `_canonical_mask` accepts only bool
    and float masks ("only bool and floating types of key_padding_mask are supported"). The
    same convention holds in every torch release since `key_padding_mask` exists (1.x used byte
    masks with the same meaning). Hugging Face models and `F.scaled_dot_product_attention`
    use the opposite convention (True/1 = attend), which is where the inverted masks come from.

    Masks whose provenance is not visible (a parameter, an imported helper) are left alone, and
    so are masks passed to Hugging Face models, to `scaled_dot_product_attention`, or to
    attention modules of other libraries.

    ## Example
    ```python
    src_padding_mask = (src != PAD_IDX).transpose(0, 1)
    out = self.transformer(src_emb, tgt_emb, src_key_padding_mask=src_padding_mask)
    ```

    ## Use instead
    ```python
    src_padding_mask = (src == PAD_IDX).transpose(0, 1)
    out = self.transformer(src_emb, tgt_emb, src_key_padding_mask=src_padding_mask)
    ```

    ## Fix safety
    The fix is unsafe, as it changes what the model attends to (which is its purpose). When the
    torch call itself builds the mask with one comparison against the pad id, the fix flips the
    comparison (`!=` to `==`, `.ne(` to `.eq(`); otherwise it inverts the argument (`~mask` for
    a bool mask, `mask == 0` for a 0/1 mask such as `attention_mask`). No fix is offered when
    the mask reaches the module through a model's `forward`, because the method may have other
    callers.

    ## References
    - torch `nn/functional.py`, `_canonical_mask` and `multi_head_attention_forward` (2.13.0)
    - torch `nn/modules/activation.py`, `MultiheadAttention.forward` docstring (`key_padding_mask`)
    - torch `nn/modules/transformer.py`, `Transformer.forward` docstring (Shape section)
    - https://pytorch.org/docs/stable/generated/torch.nn.MultiheadAttention.html
    """

    code = "MLL306"
    name = "inverted-key-padding-mask"
    summary = "key-padding mask that is True at the real tokens passed to a torch attention module"
    severity = Severity.ERROR
    tags = ("correctness", "torch")
    triggers = (("Transformer", "MultiheadAttention"),)
    requires = (("import:torch",), (
        "name:Transformer", "name:TransformerEncoder", "name:TransformerDecoder", "name:TransformerEncoderLayer", "name:TransformerDecoderLayer",
        "name:MultiheadAttention"))
    premise = {"torch": ">=1.2"}
    VALID = (
        # The torch polarity: True at padding.
        Valid("""
            import torch.nn as nn
            encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(256, 4), 2)
            out = encoder(x, src_key_padding_mask=(src == PAD_IDX).transpose(0, 1))
            """),
        # Inverted Hugging Face masks.
        Valid("""
            import torch
            mha = torch.nn.MultiheadAttention(256, 4, batch_first=True)
            a, _ = mha(q, k, v, key_padding_mask=~batch["attention_mask"].bool())
            b, _ = mha(q, k, v, key_padding_mask=batch["attention_mask"] == 0)
            c, _ = mha(q, k, v, key_padding_mask=(1 - batch["attention_mask"]).bool())
            """),
        # Unknown provenance: a parameter.
        Valid("""
            from torch import nn
            class Encoder(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.layer = nn.TransformerEncoderLayer(256, 4, batch_first=True)
                def forward(self, x, attention_mask):
                    return self.layer(x, src_key_padding_mask=attention_mask)
            """),
        # Hugging Face models and SDPA take True/1 = attend.
        Valid("""
            import torch
            import torch.nn.functional as F
            from torch.nn import Transformer
            from transformers import AutoModel
            model = AutoModel.from_pretrained("bert-base-uncased")
            out = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id))
            keep = (ids != PAD)[:, None, None, :]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
            """),
        # A home-grown attention module with its own convention.
        Valid("""
            import torch
            from x_transformers import Encoder
            enc = Encoder(dim=256, depth=2, heads=4)
            y = enc(x, mask=(src != PAD_IDX))
            """),
        # A float additive mask is a different question.
        Valid("""
            import torch
            layer = torch.nn.TransformerEncoderLayer(128, 4, batch_first=True)
            y = layer(x, src_key_padding_mask=(src != PAD_IDX).to(torch.float32))
            """),
    )
    INVALID = (
        Invalid(
            """
            import torch.nn as nn
            layer = nn.TransformerEncoderLayer(256, 4, batch_first=True)
            y = layer(x, src_key_padding_mask=(src != PAD_IDX))
            """,
            line=3,
            message="compares with the pad id (!=)",
            fix="""
            import torch.nn as nn
            layer = nn.TransformerEncoderLayer(256, 4, batch_first=True)
            y = layer(x, src_key_padding_mask=(src == PAD_IDX))
            """,
            applicability=Applicability.UNSAFE,
        ),
        # A Hugging Face attention mask cast to bool, positionally (MHA's 4th parameter).
        Invalid(
            """
            import torch
            mha = torch.nn.MultiheadAttention(256, 4, batch_first=True)
            enc = tokenizer(texts, padding=True, return_tensors="pt")
            pad = enc["attention_mask"].bool()
            out, _ = mha(h, h, h, pad)
            """,
            line=5,
            message="Hugging Face attention mask",
            fix="""
            import torch
            mha = torch.nn.MultiheadAttention(256, 4, batch_first=True)
            enc = tokenizer(texts, padding=True, return_tensors="pt")
            pad = enc["attention_mask"].bool()
            out, _ = mha(h, h, h, ~pad)
            """,
            applicability=Applicability.UNSAFE,
        ),
        # An integer attention mask passed as it is: `== 0` inverts it.
        Invalid(
            """
            from torch import nn
            decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(512, 8), 6)
            for batch in loader:
                out = decoder(tgt, memory, memory_key_padding_mask=batch["attention_mask"])
            """,
            line=4,
            message="only bool and floating types",
            fix="""
            from torch import nn
            decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(512, 8), 6)
            for batch in loader:
                out = decoder(tgt, memory, memory_key_padding_mask=batch["attention_mask"] == 0)
            """,
            applicability=Applicability.UNSAFE,
        ),
        # The tutorial's shape: a create_mask helper returning a tuple, and the model's forward.
        Invalid(
            """
            import torch
            from torch import nn
            class Seq2Seq(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.transformer = nn.Transformer(d_model=512, nhead=8)
                def forward(self, src, tgt, tgt_mask, src_padding_mask, tgt_padding_mask):
                    return self.transformer(src, tgt, None, tgt_mask, None, src_padding_mask, tgt_padding_mask,
                                            src_padding_mask)
            def create_mask(src, tgt):
                tgt_mask = nn.Transformer.generate_square_subsequent_mask(tgt.size(0))
                return tgt_mask, src.ne(PAD_IDX).t(), tgt.ne(PAD_IDX).t()
            model = Seq2Seq()
            for src, tgt in loader:
                tgt_mask, src_pad, tgt_pad = create_mask(src, tgt[:-1])
                logits = model(src, tgt[:-1], tgt_mask, src_pad, tgt_pad)
            """,
            line=16,
            count=2,
            message="through `Seq2Seq.forward`",
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        slots = ctx.get(AttentionSlots)
        evaluator = _Evaluator(ctx)
        reported: Set[int] = set()
        for torch_call in slots.torch_calls:
            for param in key_padding_parameters(torch_call.callee):
                arg = torch_call.binding.args.get(param)
                found = evaluator.polarity(arg.value) if arg is not None else None
                if found is not None and found.keep:
                    reported.add(id(arg))
                    yield self._report(ctx, torch_call, param, arg, found, None)
        for call in ctx.nodes(cst.Call):
            local = slots.local_call(call)
            if local is None or local.binding.opaque:
                continue
            passed = {name: a.value for name, a in local.binding.args.items()}
            for torch_call in slots.inside(local.method):
                for param in key_padding_parameters(torch_call.callee):
                    arg = torch_call.binding.args.get(param)
                    if arg is None or evaluator.polarity(arg.value) is not None:
                        continue  # judged at the torch call
                    found = evaluator.polarity(arg.value, passed)
                    carrier = local.binding.args.get(found.param) if found is not None and found.param else None
                    if found is not None and found.keep and carrier is not None and id(carrier) not in reported:
                        reported.add(id(carrier))
                        via = f"{local.cls.name.value}.{local.method.name.value}"
                        yield self._report(ctx, torch_call, param, carrier, found, via)

    def _report(self, ctx: Context, torch_call: TorchCall, param: str, arg: cst.Arg, found: Polarity,
                via: Optional[str]) -> Diagnostic:
        callee = torch_call.callee.replace("torch.nn.", "nn.")
        where = f" (through `{via}`)" if via else ""
        line = ctx.locator.location(ctx.span(found.evidence)[0]).row
        consequence = ("as an integer tensor it is rejected (`_canonical_mask`: only bool and floating types "
                       "are supported), and cast to bool it" if not found.is_bool and found.flippable is False
                       and _HF_MASK.search(_last_name(found.evidence) or "") else "it")
        message = (f"`{ctx.code(arg.value)}` passed as `{param}` of `{callee}`{where} is True/1 at the real tokens "
                   f"({found.reason}, line {line}), but torch ignores the keys where a key-padding mask is True: "
                   f"{consequence} hides the real tokens and leaves only the padding visible")
        fix = None if via else self._fix(ctx, arg, found)
        return ctx.report(arg, message, fix=fix,
                          help="Build it True at padding: `src == pad_idx`, or `attention_mask == 0`")

    @staticmethod
    def _fix(ctx: Context, arg: cst.Arg, found: Polarity) -> Optional[Fix]:
        message = "Invert the key-padding mask"
        start, end = ctx.span(arg.value)
        evidence_start, evidence_end = ctx.span(found.evidence)
        if found.flippable and start <= evidence_start and evidence_end <= end:
            node = found.evidence
            if isinstance(node, cst.Comparison):
                op = node.comparisons[0].operator
                replacement = "==" if isinstance(op, cst.NotEqual) else "!="
                return ctx.fix(message, Applicability.UNSAFE, ctx.replace(op, replacement))
            if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute):
                name = node.func.attr
                return ctx.fix(message, Applicability.UNSAFE, ctx.replace(name, "eq" if name.value == "ne" else "ne"))
            return None
        value = arg.value
        atom = isinstance(value, (cst.Name, cst.Attribute, cst.Subscript, cst.Call)) and not value.lpar
        text = ctx.code(value) if atom or value.lpar else f"({ctx.code(value)})"
        return ctx.fix(message, Applicability.UNSAFE,
                       ctx.replace(value, f"~{text}" if found.is_bool else f"{text} == 0"))
