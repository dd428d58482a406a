from __future__ import annotations

from typing import Iterator, List, Optional, Set, Tuple

import libcst as cst
from packaging.version import Version

from mllint.analysis.dataflow import Assignments
from mllint.analysis.masks import (
    ALL_BLOCKED, ANTI_CAUSAL, ANTI_CAUSAL_DIAGONAL, CAUSAL, DIAGONAL_BLOCKED, FLOAT_01, MASK_PARAMS,
    NOTHING_BLOCKED, SDPA_NAME, AttentionSlots, Mask, Masks, TorchCall,
)
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Fix, Severity
from mllint.core.rule import Invalid, Rule, Valid

_PROBLEMS = {
    FLOAT_01: "is a float mask of 0s and 1s: float masks are added to the attention scores, not "
              "used to select, so it blocks nothing and every position sees the future",
    DIAGONAL_BLOCKED: "blocks the diagonal as well as the future: the first position may attend to "
                      "nothing, and a fully masked row gives NaN",
    ANTI_CAUSAL: "is anti-causal: it blocks the past and leaves the future visible",
    ANTI_CAUSAL_DIAGONAL: "blocks the past and the diagonal and leaves the future visible (the last "
                          "position may attend to nothing, and a fully masked row gives NaN)",
    NOTHING_BLOCKED: "blocks nothing: every position sees the future",
    ALL_BLOCKED: "blocks every position: a fully masked row gives NaN",
}


def _short_name(callee: str) -> str:
    return "F.scaled_dot_product_attention" if callee == SDPA_NAME else callee.replace("torch.nn.", "nn.")


def _module_imports(ctx: Context) -> Set[str]:
    """Local names bound by imports at the top level of the module."""
    out: Set[str] = set()
    for statement in ctx.module.body:
        if not isinstance(statement, cst.SimpleStatementLine):
            continue
        for small in statement.body:
            if isinstance(small, (cst.Import, cst.ImportFrom)) and not isinstance(small.names, cst.ImportStar):
                for alias in small.names:
                    name = alias.asname.name if alias.asname is not None else alias.name
                    while isinstance(name, cst.Attribute):
                        name = name.value
                    if isinstance(name, cst.Name):
                        out.add(name.value)
    return out


def _spelling(ctx: Context, target: str, at: cst.CSTNode) -> Optional[str]:
    """How the module can name ``target`` (e.g. ``torch.nn.Transformer``) at ``at``, through a
    top-level import that nothing in the enclosing function shadows."""
    function = ctx.enclosing(at, cst.FunctionDef)
    shadowed = {p.name.value for p in function.params.params} if function is not None else set()
    candidates: List[Tuple[int, str]] = []
    for local in _module_imports(ctx) - shadowed:
        bound = ctx.names.bindings.get(local, set())
        if len(bound) != 1:
            continue
        (full,) = bound
        if target == full or target.startswith(full + "."):
            candidates.append((len(full), local + target[len(full):]))
    return max(candidates)[1] if candidates else None


def _is_load(ctx: Context, name: cst.Name) -> bool:
    """A variable read, not a keyword of a call or an attribute name."""
    parent = ctx.parent(name)
    if isinstance(parent, cst.Arg) and parent.keyword is name:
        return False
    return not (isinstance(parent, cst.Attribute) and parent.attr is name)


class MalformedCausalMask(Rule):
    """## What it does
    Checks for a hand-built causal mask that does not do what a causal mask must, passed to a
    torch attention argument: `src_mask`/`tgt_mask` of `nn.Transformer`, `tgt_mask` of
    `nn.TransformerDecoder(Layer)`, `mask`/`src_mask` of `nn.TransformerEncoder(Layer)`,
    `attn_mask` of `nn.MultiheadAttention` and of `F.scaled_dot_product_attention`. The
    construction is evaluated: `torch.ones`/`full`/`zeros`, `triu`/`tril` with their `diagonal`,
    transposes, comparisons such as `== 1`, `~`, `.bool()`/`.float()`, `masked_fill` and
    `torch.where` values, through local variables, `self.` attributes and buffers, and one helper
    function of the module that returns the mask. Reported are masks that

    - are float 0/1 (`torch.tril(torch.ones(T, T))`): added to the scores, they block nothing;
    - are anti-causal (the past blocked, the future visible), e.g. a bool `tril`, which is True
      on the side that may attend;
    - block the diagonal (`torch.triu(torch.full((T, T), float("-inf")))` without
      `diagonal=1`), so the first position has nothing to attend to.

    A correct hand-built mask (the translation tutorial's
    `(torch.triu(torch.ones(sz, sz)) == 1).transpose(0, 1)` followed by `masked_fill` of -inf and
    0.0, or `torch.log(torch.tril(torch.ones(sz, sz)))`) is left alone, and so are masks reaching
    attention code of other libraries or hand-written attention (which often multiplies by a 0/1
    mask or uses `masked_fill(mask == 0, -1e9)` itself).

    ## Why is this bad?
    torch's attention turns a *bool* mask into an additive one with -inf where it is True and
    adds *float* masks to the attention scores as they are (torch `nn/functional.py`,
    `_canonical_mask`, called by `nn.MultiheadAttention.forward`, `multi_head_attention_forward`
    and the transformer layers; torch 2.x). So for the torch modules True means "not allowed to
    attend", and a float mask of 0s and 1s shifts some scores by one and blocks nothing: the
    decoder reads the tokens it is supposed to predict, training loss falls quickly and inference
    produces garbage. `F.scaled_dot_product_attention` has the opposite bool convention (True =
    take part, `nn/functional.py` docstring), which the rule applies to its `attn_mask`.
    A mask that blocks the diagonal leaves the first row with only -inf; softmax of that row is
    NaN, which propagates through the whole batch. The correct mask,
    `nn.Transformer.generate_square_subsequent_mask(T)` (`nn/modules/transformer.py`,
    `_generate_square_subsequent_mask`), is -inf strictly above the diagonal and 0.0 elsewhere.

    ## Example
    ```python
    T = tgt.size(0)
    tgt_mask = torch.tril(torch.ones(T, T))
    out = self.transformer(src, tgt, tgt_mask=tgt_mask)
    ```

    ## Use instead
    ```python
    T = tgt.size(0)
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(T)
    out = self.transformer(src, tgt, tgt_mask=tgt_mask)
    ```

    ## Fix safety
    When the mask is one expression (inline, or a local variable used only there) whose size
    is known, the fix replaces it with the correct causal mask of the same size, dtype kind and
    device: `nn.Transformer.generate_square_subsequent_mask(T, device=...)` for a float mask
    (`torch.triu(torch.full((T, T), float("-inf"), ...), diagonal=1)` when it has an explicit
    dtype or the target torch is older than 2.0, where the method was not yet static), and
    `torch.triu(torch.ones(T, T, dtype=torch.bool, ...), diagonal=1)` for a bool mask (`tril` for
    `F.scaled_dot_product_attention`), so a bool `key_padding_mask` passed alongside keeps
    matching (`_canonical_mask` warns on mismatched mask types). It uses the names the module
    already imports and is offered only when they exist.
    The fix is unsafe: it changes what the model attends to, which is its purpose, so a model
    trained with the old mask behaves differently, and an unusual mask (a right-to-left decoder)
    may have been meant. Review it before applying.

    ## References
    - torch `nn/functional.py`, `_canonical_mask`, `multi_head_attention_forward`,
      `scaled_dot_product_attention`
    - torch `nn/modules/transformer.py`, `Transformer.generate_square_subsequent_mask`
    - https://pytorch.org/docs/stable/generated/torch.nn.Transformer.html
    - https://github.com/pytorch/pytorch/issues/21518 (a `torch.tril(torch.ones(...))` `attn_mask`
      that does not make `nn.MultiheadAttention` causal)
    - https://github.com/pytorch/pytorch/issues/92554
    """

    code = "MLL304"
    name = "malformed-causal-mask"
    summary = "hand-built causal mask that is float 0/1, anti-causal or blocks the diagonal"
    severity = Severity.ERROR
    tags = ("correctness", "torch")
    triggers = (("triu", "tril", "generate_square_subsequent_mask"),
                ("Transformer", "MultiheadAttention", "scaled_dot_product_attention"))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (
        ("import:torch",),
        ("name:triu", "name:tril", "name:*generate_square_subsequent_mask"),
        ("name:Transformer", "name:TransformerDecoder", "name:TransformerDecoderLayer",
         "name:TransformerEncoder", "name:TransformerEncoderLayer", "name:MultiheadAttention",
         "name:scaled_dot_product_attention"),
    )
    premise = {"torch": ">=2.0"}
    VALID = (
        # The translation tutorial's helper: a correct additive causal mask.
        Valid("""
            import torch
            from torch import nn
            def square_subsequent(n):
                m = (torch.triu(torch.ones((n, n), device=DEVICE)) == 1).transpose(0, 1)
                m = m.float().masked_fill(m == 0, float('-inf')).masked_fill(m == 1, float(0.0))
                return m
            class Seq2Seq(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.transformer = nn.Transformer(d_model=256)
                def forward(self, src, tgt):
                    return self.transformer(src, tgt, tgt_mask=square_subsequent(tgt.size(0)))
            """),
        # Correct bool masks for torch modules (True = blocked) and for SDPA (True = attend).
        Valid("""
            import torch
            import torch.nn.functional as F
            mha = torch.nn.MultiheadAttention(64, 4, batch_first=True)
            causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
            y, _ = mha(x, x, x, attn_mask=causal)
            keep = torch.ones(T, T, dtype=torch.bool).tril()
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
            """),
        # log of a 0/1 lower triangle, torch.where with -inf, and the library's own generator.
        Valid("""
            import torch
            from torch import nn
            enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(128, 4), 2)
            a = enc(x, mask=torch.log(torch.tril(torch.ones(n, n))))
            b = enc(x, mask=torch.where(torch.tril(torch.ones(n, n)) == 1, 0.0, float("-inf")))
            c = enc(x, mask=nn.Transformer.generate_square_subsequent_mask(n, device=x.device))
            d = enc(x, mask=(1.0 - torch.tril(torch.ones(n, n))) * -1e9)
            """),
        # A 0/1 mask for hand-written attention that uses it with masked_fill itself.
        Valid("""
            import torch
            from torch import nn
            class Attention(nn.Module):
                def __init__(self, block):
                    super().__init__()
                    self.register_buffer("bias", torch.tril(torch.ones(block, block)))
                def forward(self, q, k, v, T):
                    att = (q @ k.transpose(-2, -1)).masked_fill(self.bias[:T, :T] == 0, float("-inf"))
                    return att.softmax(-1) @ v
            """),
        # A sliding-window (banded) mask is deliberate, not malformed.
        Valid("""
            import torch
            from torch import nn
            layer = nn.TransformerEncoderLayer(64, 4)
            band = torch.ones(n, n, dtype=torch.bool).triu(1) | torch.ones(n, n, dtype=torch.bool).tril(-3)
            out = layer(x, src_mask=band)
            """),
        # Unknown construction or unknown callee: silent.
        Valid("""
            import torch
            from mylib import Decoder
            dec = Decoder()
            out = dec(x, tgt_mask=torch.tril(torch.ones(T, T)))
            mha = torch.nn.MultiheadAttention(64, 4)
            y = mha(x, x, x, attn_mask=make_mask(T))
            """),
    )
    INVALID = (
        Invalid(
            """
            import torch
            from torch import nn
            class Seq2Seq(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.transformer = nn.Transformer(d_model=256, batch_first=True)
                def forward(self, src, tgt):
                    T = tgt.size(1)
                    tgt_mask = torch.tril(torch.ones(T, T)).to(tgt.device)
                    return self.transformer(src, tgt, tgt_mask=tgt_mask)
            """,
            line=10,
            message="float mask of 0s and 1s",
            fix="""
            import torch
            from torch import nn
            class Seq2Seq(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.transformer = nn.Transformer(d_model=256, batch_first=True)
                def forward(self, src, tgt):
                    T = tgt.size(1)
                    tgt_mask = nn.Transformer.generate_square_subsequent_mask(T, device=tgt.device)
                    return self.transformer(src, tgt, tgt_mask=tgt_mask)
            """,
            applicability=Applicability.UNSAFE,
        ),
        # A bool tril: True marks the side that may attend, the opposite of torch's convention.
        Invalid(
            """
            import torch
            decoder = torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(512, 8), 6)
            out = decoder(tgt, memory, tgt_mask=torch.tril(torch.ones(L, L, dtype=torch.bool, device=dev)))
            """,
            line=3,
            message="inverted",
            fix="""
            import torch
            decoder = torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(512, 8), 6)
            out = decoder(tgt, memory, tgt_mask=torch.triu(torch.ones(L, L, dtype=torch.bool, device=dev), diagonal=1))
            """,
            applicability=Applicability.UNSAFE,
        ),
        # The tutorial idiom without its transpose: anti-causal, through a local helper.
        Invalid(
            """
            import torch
            import torch.nn as nn
            def subsequent_mask(size):
                mask = torch.triu(torch.ones(size, size)) == 1
                mask = mask.float().masked_fill(mask == 0, float('-inf')).masked_fill(mask == 1, 0.0)
                return mask
            model = nn.Transformer()
            out = model(src, tgt, tgt_mask=subsequent_mask(tgt.size(0)))
            """,
            line=8,
            message="anti-causal",
        ),
        # triu of -inf without diagonal=1 blocks the diagonal: NaN in the first row.
        Invalid(
            """
            import torch
            layer = torch.nn.TransformerEncoderLayer(d_model=64, nhead=4)
            mask = torch.triu(torch.full((S, S), float("-inf")))
            h = layer(x, src_mask=mask)
            """,
            line=4,
            message="blocks the diagonal",
            fix="""
            import torch
            layer = torch.nn.TransformerEncoderLayer(d_model=64, nhead=4)
            mask = torch.nn.Transformer.generate_square_subsequent_mask(S)
            h = layer(x, src_mask=mask)
            """,
            applicability=Applicability.UNSAFE,
        ),
        # A registered 0/1 buffer sliced for nn.MultiheadAttention (seen in public code).
        Invalid(
            """
            import torch
            from torch import nn
            class SelfAttention(nn.Module):
                def __init__(self, cfg):
                    super().__init__()
                    self.register_buffer("mask", torch.tril(torch.ones(cfg.block, cfg.block))
                                         .view(1, 1, cfg.block, cfg.block))
                    self.attn = nn.MultiheadAttention(cfg.dim, cfg.heads, batch_first=True)
                def forward(self, x):
                    n = x.size(1)
                    return self.attn(x, x, x, attn_mask=self.mask[0, 0, :n, :n])[0]
            """,
            line=11,
            message="`attn_mask` of `nn.MultiheadAttention`",
        ),
        # SDPA wants True = attend: an nn-style "True = blocked" mask is inverted there.
        Invalid(
            """
            import torch
            import torch.nn.functional as F
            blocked = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=blocked)
            """,
            line=4,
            message="True means take part",
            fix="""
            import torch
            import torch.nn.functional as F
            blocked = torch.tril(torch.ones(T, T, dtype=torch.bool))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=blocked)
            """,
            applicability=Applicability.UNSAFE,
        ),
        # Built in the training loop and passed through a local module to nn.Transformer.
        Invalid(
            """
            import torch
            from torch import nn
            class Translator(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.core = nn.Transformer(d_model=128, nhead=4)
                def forward(self, src, tgt, tgt_mask):
                    return self.core(src, tgt, tgt_mask=tgt_mask)
            model = Translator()
            for src, tgt in loader:
                n = tgt.shape[0]
                causal = torch.triu(torch.ones(n, n)).transpose(0, 1)
                logits = model(src, tgt, causal)
            """,
            line=13,
            message="through `Translator.forward`",
            fix="""
            import torch
            from torch import nn
            class Translator(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.core = nn.Transformer(d_model=128, nhead=4)
                def forward(self, src, tgt, tgt_mask):
                    return self.core(src, tgt, tgt_mask=tgt_mask)
            model = Translator()
            for src, tgt in loader:
                n = tgt.shape[0]
                causal = nn.Transformer.generate_square_subsequent_mask(n)
                logits = model(src, tgt, causal)
            """,
            applicability=Applicability.UNSAFE,
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        slots = ctx.get(AttentionSlots)
        masks = ctx.get(Masks)
        reported: Set[cst.CSTNode] = set()
        for torch_call in slots.torch_calls:
            for param in MASK_PARAMS.get(torch_call.callee, ()):
                arg = torch_call.binding.args.get(param)
                mask = masks.evaluate(arg.value) if arg is not None else None
                if arg is not None and mask is not None and arg not in reported:
                    diagnostic = self._report(ctx, torch_call, param, arg, mask, None, True)
                    if diagnostic is not None:
                        reported.add(arg)
                        yield diagnostic
        for call in ctx.nodes(cst.Call):
            local = slots.local_call(call)
            if local is None or local.binding.opaque:
                continue
            for torch_call in slots.inside(local.method):
                for param in MASK_PARAMS.get(torch_call.callee, ()):
                    arg = torch_call.binding.args.get(param)
                    if arg is None or masks.evaluate(arg.value) is not None:
                        continue  # judged where the torch call is
                    mask = masks.evaluate(arg.value, Masks.bind_params(local.method, call, method=True))
                    carrier = self._carrier(ctx, local.binding.args, arg.value)
                    if mask is not None and carrier is not None and carrier not in reported:
                        via = f"{local.cls.name.value}.{local.method.name.value}"
                        # The fix may go to the caller when the method hands the mask on as it is.
                        unchanged = isinstance(arg.value, cst.Name) and local.binding.args.get(
                            arg.value.value) is carrier and ctx.get(Assignments).reaching(arg.value) is None
                        diagnostic = self._report(ctx, torch_call, param, carrier, mask, via, unchanged)
                        if diagnostic is not None:
                            reported.add(carrier)
                            yield diagnostic

    @staticmethod
    def _carrier(ctx: Context, passed, value: cst.BaseExpression) -> Optional[cst.Arg]:
        """The call-site argument whose parameter the torch argument is computed from."""
        flow = ctx.get(Assignments)
        used = {n.value for n in flow.derivation(value) if isinstance(n, cst.Name)}
        carriers = [arg for name, arg in passed.items() if name in used]
        return carriers[0] if len(carriers) == 1 else None

    def _report(self, ctx: Context, torch_call: TorchCall, param: str, arg: cst.Arg, mask: Mask,
                via: Optional[str], fixable: bool) -> Optional[Diagnostic]:
        if not mask.triangular:
            return None
        shape = mask.shape(torch_call.true_blocks)
        if shape is None or shape == CAUSAL:
            return None
        callee = _short_name(torch_call.callee)
        problem = _PROBLEMS[shape]
        if mask.dtype == "bool" and mask.shape(not torch_call.true_blocks) == CAUSAL:
            allowed, meaning = (("may attend", "not allowed to attend") if torch_call.true_blocks
                                else ("may not attend", "take part"))
            problem = (f"is inverted: True marks the positions that {allowed}, but for `{callee}` "
                       f"True means {meaning}, so it {problem}")
        where = f" through `{via}`" if via else ""
        message = (f"causal mask `{ctx.code(arg.value)}`{self._origin(ctx, arg.value)} passed as "
                   f"`{param}` of `{callee}`{where} {problem}")
        fix = self._fix(ctx, torch_call, arg, mask) if fixable else None
        return ctx.report(arg, message, fix=fix,
                          help="Use `nn.Transformer.generate_square_subsequent_mask(T)`: -inf above "
                               "the diagonal, 0.0 elsewhere")

    @staticmethod
    def _origin(ctx: Context, value: cst.BaseExpression) -> str:
        """`` (`torch.tril(...)`, line 9)`` for a local variable, else nothing."""
        rhs = ctx.get(Assignments).reaching(value) if isinstance(value, cst.Name) else None
        if rhs is None:
            return ""
        text = " ".join(ctx.code(rhs).split())
        text = text if len(text) <= 60 else text[:57] + "..."
        return f" (`{text}`, line {ctx.locator.location(ctx.span(rhs)[0]).row})"

    def _fix(self, ctx: Context, torch_call: TorchCall, arg: cst.Arg, mask: Mask) -> Optional[Fix]:
        target = self._fix_target(ctx, arg)
        if target is None or not mask.plain:
            return None
        torch_name = _spelling(ctx, "torch", target)
        device = f", device={mask.device}" if mask.device else ""
        size = mask.size
        if mask.dtype == "bool":
            if torch_name is None:
                return None
            ones = f"{torch_name}.ones({size}, {size}, dtype={torch_name}.bool{device})"
            text = (f"{torch_name}.triu({ones}, diagonal=1)" if torch_call.true_blocks
                    else f"{torch_name}.tril({ones})")
        elif mask.dtype == "float":
            version = ctx.target_version("torch")
            generator = _spelling(ctx, "torch.nn.Transformer", target)
            if mask.dtype_text is None and generator is not None and (version is None or version >= Version("2.0")):
                text = f"{generator}.generate_square_subsequent_mask({size}{device})"
            elif torch_name is not None:
                dtype = f", dtype={mask.dtype_text}" if mask.dtype_text else ""
                text = f'{torch_name}.triu({torch_name}.full(({size}, {size}), float("-inf"){dtype}{device}), diagonal=1)'
            else:
                return None
        else:
            return None
        return ctx.fix("Replace with a correct causal mask", Applicability.UNSAFE, ctx.replace(target, text))

    @staticmethod
    def _fix_target(ctx: Context, arg: cst.Arg) -> Optional[cst.BaseExpression]:
        """The expression to replace: the argument itself, or the value of a local variable that
        is used only as this argument, when it is the whole construction."""
        masks = ctx.get(Masks)
        inline = masks.evaluate(arg.value)
        if inline is not None and inline.node is arg.value:
            return arg.value
        value = arg.value
        rhs = ctx.get(Assignments).reaching(value) if isinstance(value, cst.Name) else None
        assign = ctx.parent(rhs) if rhs is not None else None
        if not isinstance(assign, cst.Assign) or len(assign.targets) != 1:
            return None
        inner = masks.evaluate(rhs)
        if inner is None or inner.node is not rhs:
            return None
        scope = ctx.enclosing(value, cst.FunctionDef)
        uses = [n for n in ctx.nodes(cst.Name) if n.value == value.value and _is_load(ctx, n)
                and ctx.enclosing(n, cst.FunctionDef) is scope and ctx.order(n) > ctx.end_order(assign)]
        return rhs if uses == [value] else None
