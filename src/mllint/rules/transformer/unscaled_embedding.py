from __future__ import annotations

from typing import Iterator, List, Optional

import libcst as cst

from mllint.analysis.dataflow import Assignments
from mllint.analysis.instances import constructor_of
from mllint.analysis.masks import AttentionSlots
from mllint.analysis.positional import Positional
from mllint.core.context import Context
from mllint.core.diagnostic import Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid

# The sequence inputs of torch 2.13.0's transformer modules (nn/modules/transformer.py).
INPUTS = {
    "torch.nn.Transformer": ("src", "tgt"),
    "torch.nn.TransformerEncoder": ("src",),
    "torch.nn.TransformerEncoderLayer": ("src",),
    "torch.nn.TransformerDecoder": ("tgt",),
    "torch.nn.TransformerDecoderLayer": ("tgt",),
}
_SCALING_CALLS = frozenset({"mul", "mul_", "div", "div_", "sqrt", "rsqrt", "multiply", "scale"})


def _scales(node: cst.CSTNode) -> bool:
    """Whether ``node`` multiplies or divides (``x * math.sqrt(d)``, ``x.mul(s)``, ``x / t``)."""
    if isinstance(node, cst.BinaryOperation) and isinstance(
            node.operator, (cst.Multiply, cst.Divide, cst.Power, cst.MatrixMultiply)):
        return True
    if isinstance(node, cst.AugAssign) and isinstance(node.operator, (cst.MultiplyAssign, cst.DivideAssign)):
        return True
    if isinstance(node, cst.Call):
        func = node.func
        name = func.attr.value if isinstance(func, cst.Attribute) else func.value if isinstance(func, cst.Name) else ""
        return name in _SCALING_CALLS
    return False


class UnscaledEmbedding(Rule):
    """## What it does
    Checks for token embeddings fed to a torch `nn.Transformer`, `nn.TransformerEncoder`,
    `nn.TransformerDecoder` or one of their layers with a *sinusoidal* positional encoding added
    (a module or buffer built with sin/cos) but without the embedding being multiplied by
    `math.sqrt(d_model)` anywhere on the way: not in `forward`, not in a token-embedding module,
    not in the positional-encoding module. Off by default: it is a convention, not a bug.

    ## Why is this bad?
    Vaswani et al. (2017), section 3.4, multiply the embedding weights by sqrt(d_model) before
    the sinusoidal encoding (values in [-1, 1]) is added, which sets how strongly position is
    mixed into the token signal. torch's modules add no positional information and no scaling
    (torch 2.13.0 `nn/modules/transformer.py`, `Transformer.forward` runs the encoder and the
    decoder on the tensors it is given), so a from-scratch model has to do both; the PyTorch
    translation tutorial's `TokenEmbedding` returns `self.embedding(tokens) * math.sqrt(emb_size)`.
    Without the factor, models trained from scratch often converge more slowly. Some maintained
    examples omit it and train fine, so this is information, not an error. Learned positional
    embeddings and models without a positional encoding are left alone.

    ## Example
    ```python
    x = self.pos_encoder(self.embedding(src))
    out = self.transformer_encoder(x)
    ```

    ## Use instead
    ```python
    x = self.pos_encoder(self.embedding(src) * math.sqrt(self.d_model))
    out = self.transformer_encoder(x)
    ```

    ## Fix safety
    There is no fix: the model dimension's name is not known, and the change alters training.

    ## References
    - Vaswani et al., "Attention Is All You Need" (2017), section 3.4
    - torch `nn/modules/transformer.py`, `Transformer.forward` (2.13.0)
    - pytorch/tutorials `beginner_source/translation_transformer.py`, `TokenEmbedding`
    """

    code = "MLL309"
    name = "unscaled-embedding"
    summary = "token embedding fed to a torch Transformer with a sinusoidal encoding but no sqrt(d_model) scaling"
    severity = Severity.INFO
    default_enabled = False
    tags = ("convention", "torch")
    triggers = (("Embedding",), ("Transformer",))
    requires = (("import:torch",), ("name:Embedding",), (
        "name:Transformer", "name:TransformerEncoder", "name:TransformerDecoder", "name:TransformerEncoderLayer", "name:TransformerDecoderLayer"))
    premise = {"torch": ">=1.2"}
    VALID = (
        # Scaled in forward.
        Valid("""
            import math
            import torch
            from torch import nn
            class PositionalEncoding(nn.Module):
                def __init__(self, d, maxlen=512):
                    super().__init__()
                    pos = torch.arange(maxlen).unsqueeze(1)
                    div = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
                    pe = torch.zeros(maxlen, 1, d)
                    pe[:, 0, 0::2] = torch.sin(pos * div)
                    pe[:, 0, 1::2] = torch.cos(pos * div)
                    self.register_buffer("pe", pe)
                def forward(self, x):
                    return x + self.pe[: x.size(0)]
            class LM(nn.Module):
                def __init__(self, ntoken, d):
                    super().__init__()
                    self.d = d
                    self.embedding = nn.Embedding(ntoken, d)
                    self.pos_encoder = PositionalEncoding(d)
                    self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 4), 2)
                def forward(self, src):
                    x = self.pos_encoder(self.embedding(src) * math.sqrt(self.d))
                    return self.encoder(x)
            """),
        # Learned positional embeddings.
        Valid("""
            import torch
            from torch import nn
            class LM(nn.Module):
                def __init__(self, ntoken, d):
                    super().__init__()
                    self.tok = nn.Embedding(ntoken, d)
                    self.pos = nn.Embedding(512, d)
                    self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 4, batch_first=True), 2)
                def forward(self, ids):
                    positions = torch.arange(ids.size(1), device=ids.device)
                    return self.encoder(self.tok(ids) + self.pos(positions))
            """),
        # No positional encoding at all (another rule's business).
        Valid("""
            from torch import nn
            class Enc(nn.Module):
                def __init__(self, ntoken, d):
                    super().__init__()
                    self.tok = nn.Embedding(ntoken, d)
                    self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 4), 2)
                def forward(self, ids):
                    return self.encoder(self.tok(ids))
            """),
        # Scaled inside a token-embedding module (the translation tutorial's shape).
        Valid("""
            import math
            import torch
            from torch import nn
            class PositionalEncoding(nn.Module):
                def __init__(self, d):
                    super().__init__()
                    pe = torch.zeros(512, 1, d)
                    pe[:, 0, 0::2] = torch.sin(torch.arange(512).unsqueeze(1) / 10000)
                    self.register_buffer("pe", pe)
                def forward(self, x):
                    return x + self.pe[: x.size(0)]
            class TokenEmbedding(nn.Module):
                def __init__(self, vocab, d):
                    super().__init__()
                    self.embedding = nn.Embedding(vocab, d)
                    self.d = d
                def forward(self, tokens):
                    return self.embedding(tokens.long()) * math.sqrt(self.d)
            class Seq2Seq(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.transformer = nn.Transformer(d_model=256)
                    self.src_emb = TokenEmbedding(1000, 256)
                    self.tgt_emb = TokenEmbedding(1000, 256)
                    self.pos = PositionalEncoding(256)
                def forward(self, src, tgt):
                    return self.transformer(self.pos(self.src_emb(src)), self.pos(self.tgt_emb(tgt)))
            """),
    )
    INVALID = (
        Invalid(
            """
            import math
            import torch
            from torch import nn
            class PositionalEncoding(nn.Module):
                def __init__(self, d, maxlen=512):
                    super().__init__()
                    pos = torch.arange(maxlen).unsqueeze(1)
                    div = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
                    pe = torch.zeros(maxlen, 1, d)
                    pe[:, 0, 0::2] = torch.sin(pos * div)
                    pe[:, 0, 1::2] = torch.cos(pos * div)
                    self.register_buffer("pe", pe)
                def forward(self, x):
                    return x + self.pe[: x.size(0)]
            class LM(nn.Module):
                def __init__(self, ntoken, d):
                    super().__init__()
                    self.embedding = nn.Embedding(ntoken, d)
                    self.pos_encoder = PositionalEncoding(d)
                    self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 4), 2)
                def forward(self, src):
                    x = self.pos_encoder(self.embedding(src))
                    return self.encoder(x)
            """,
            line=23,
            message="sinusoidal positional encoding",
        ),
        # The sin/cos table is a buffer of the model itself.
        Invalid(
            """
            import torch
            from torch import nn
            class Seq2Seq(nn.Module):
                def __init__(self, vocab, d):
                    super().__init__()
                    self.src_emb = nn.Embedding(vocab, d)
                    self.tgt_emb = nn.Embedding(vocab, d)
                    pos = torch.arange(256).unsqueeze(1).float()
                    table = torch.zeros(256, d)
                    table[:, 0::2] = torch.sin(pos / 10000 ** (torch.arange(0, d, 2) / d))
                    table[:, 1::2] = torch.cos(pos / 10000 ** (torch.arange(0, d, 2) / d))
                    self.register_buffer("pe", table.unsqueeze(1))
                    self.transformer = nn.Transformer(d_model=d, nhead=4)
                def forward(self, src, tgt):
                    s = self.src_emb(src) + self.pe[: src.size(0)]
                    t = self.tgt_emb(tgt) + self.pe[: tgt.size(0)]
                    return self.transformer(s, t)
            """,
            line=17,
            count=2,
            message="`nn.Transformer`",
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        slots = ctx.get(AttentionSlots)
        positional = ctx.get(Positional)
        flow = ctx.get(Assignments)
        reported = set()  # one finding per token embedding of a class (forward, encode, decode)
        for torch_call in slots.torch_calls:
            for param in INPUTS.get(torch_call.callee, ()):
                arg = torch_call.binding.args.get(param)
                if arg is None:
                    continue
                found = positional.flow(arg.value)
                if not found.complete or found.applied is None or found.embedded is None or not found.tokens:
                    continue
                table = self._sinusoidal(ctx, positional, found.applied)
                if table is None:
                    continue
                functions = self._functions(ctx, found.embedded, found.applied, arg.value)
                if any(_scales(n) for n in flow.derivation(arg.value)) or any(
                        _scales(n) for f in functions for n in _walk(f)):
                    continue
                key = (ctx.enclosing(arg, cst.ClassDef), ctx.code(found.embedded.func))
                if key[0] is not None and key in reported:
                    continue
                reported.add(key)
                callee = torch_call.callee.replace("torch.nn.", "nn.")
                yield ctx.report(
                    arg,
                    f"`{ctx.code(arg.value)}` fed to `{callee}` as `{param}` is a token embedding "
                    f"(`{ctx.code(found.embedded.func)}`) plus a sinusoidal positional encoding ({table}), "
                    f"and the embedding is never multiplied by sqrt(d_model) (Vaswani et al. 2017, 3.4)",
                    help="Scale the token embedding: `self.embedding(src) * math.sqrt(d_model)`",
                )

    @staticmethod
    def _class_of(ctx: Context, positional: Positional, node: cst.CSTNode) -> Optional[cst.ClassDef]:
        """The local class whose instance (or own buffer) ``node`` applies."""
        if isinstance(node, cst.Call):
            func = node.func.value if isinstance(node.func, cst.Attribute) and node.func.attr.value == "forward" \
                else node.func
            ctor = constructor_of(positional.instances, func, node)
            if ctor is not None and isinstance(ctor.func, cst.Name):
                found = positional.classes.get(ctor.func.value, [])
                return found[0] if len(found) == 1 else None
            return None
        if isinstance(node, cst.Attribute):
            return ctx.enclosing(node, cst.ClassDef)
        return None

    def _sinusoidal(self, ctx: Context, positional: Positional, applied: cst.CSTNode) -> Optional[str]:
        cls = self._class_of(ctx, positional, applied)
        evidence = positional.class_evidence(cls) if cls is not None else None
        if evidence is None or not evidence.startswith("it builds sin/cos"):
            return None
        return f"`{ctx.code(applied) if isinstance(applied, cst.Attribute) else cls.name.value}`, {evidence}"

    def _functions(self, ctx: Context, embedded: cst.Call, applied: cst.CSTNode,
                   value: cst.BaseExpression) -> List[cst.FunctionDef]:
        """Where else the scaling may be: the ``forward`` of the token-embedding and
        positional-encoding classes, and methods of this class the value is computed through."""
        positional = ctx.get(Positional)
        out: List[cst.FunctionDef] = []
        for node in (embedded, applied):
            cls = self._class_of(ctx, positional, node) if isinstance(node, cst.Call) else None
            if cls is not None:
                out.extend(s for s in cls.body.body if isinstance(s, cst.FunctionDef) and s.name.value != "__init__")
        owner = ctx.enclosing(value, cst.ClassDef)
        methods = {s.name.value: s for s in owner.body.body if isinstance(s, cst.FunctionDef)} if owner else {}
        for node in ctx.get(Assignments).derivation(value):
            if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) \
                    and isinstance(node.func.value, cst.Name) and node.func.value.value == "self" \
                    and node.func.attr.value in methods:
                out.append(methods[node.func.attr.value])
        return out


def _walk(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    pending = [node]
    while pending:
        current = pending.pop()
        yield current
        pending.extend(current.children)
