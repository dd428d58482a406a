from __future__ import annotations

from typing import Iterator, Optional, Tuple

import libcst as cst

from mllint.analysis.positional import Flow, Positional
from mllint.analysis.torch_modules import TRANSFORMER, DecoderCall, decoder_call
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Fix, Severity
from mllint.core.rule import Invalid, Rule, Valid


class TargetWithoutPositionalEncoding(Rule):
    """## What it does
    Checks for a target fed to an `nn.Transformer` (its 2nd argument) or to an
    `nn.TransformerDecoder` / `nn.TransformerDecoderLayer` (its 1st) that demonstrably gets no
    positional encoding, while the source passes through one, or the model holds one it never
    applies to the target. "Demonstrably" means every step of the target's computation is visible
    and understood: it comes from a token embedding (`self.tgt_embed(tgt)`, an `nn.Embedding`, an
    embedding class of the module) through scaling, dropout, normalisation and tensor methods
    only. A positional encoding is a module that adds sin/cos tables or learned position
    embeddings, `x + self.pe[:, :T]`, `+ self.pos_emb(positions)` (see
    `mllint.analysis.positional`).

    ## Why is this bad?
    `nn.Transformer` adds no position information: `Transformer.forward` runs the encoder on
    `src` and the decoder on `tgt` as given, and its layers hold only attention, feed-forward and
    normalisation parts (torch `nn/modules/transformer.py`, read in 2.13.0), and attention is
    invariant to the order of its keys. A target
    without a positional encoding leaves the decoder only the causal mask to tell positions
    apart, so it cannot learn word order well; the model trains to a plateau and translates
    into bags of words. The reference implementations (the PyTorch translation tutorial,
    pytorch/examples `language_translation`) apply the same positional encoding to both sides.

    A target that arrives already embedded (a parameter of `forward`), learned decoder queries
    (DETR), and decoders built with `custom_decoder=` or a custom layer (which may use rotary or
    relative positions inside) are left alone.

    ## Example
    ```python
    src = self.pos_encoder(self.src_embed(src))
    tgt = self.tgt_embed(tgt)
    out = self.transformer(src, tgt, tgt_mask=tgt_mask)
    ```

    ## Use instead
    ```python
    src = self.pos_encoder(self.src_embed(src))
    tgt = self.pos_encoder(self.tgt_embed(tgt))
    out = self.transformer(src, tgt, tgt_mask=tgt_mask)
    ```

    ## Fix safety
    When the source passes through a call of a positional-encoding module with one argument
    (`self.pos_encoder(x)`) and the transformer call is not inside a loop, the fix wraps the
    target argument in the same call. It is unsafe: it changes what the model computes (a
    trained checkpoint must be retrained), and the module must accept the target's layout, which
    holds when it is applied to a source of the same layout. Otherwise there is no fix: where
    the position table belongs depends on the model.

    ## References
    - torch `nn/modules/transformer.py`, `Transformer.__init__` and `Transformer.forward` (L100, L179,
      torch 2.13.0)
    - https://pytorch.org/tutorials/beginner/translation_transformer.html
    - https://github.com/pytorch/examples/blob/main/language_translation/src/model.py
    """

    code = "MLL301"
    name = "target-without-positional-encoding"
    summary = "target fed to a torch transformer decoder without the positional encoding the source gets"
    severity = Severity.WARNING
    tags = ("correctness", "torch")
    triggers = (("Transformer",),)
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (
        ("import:torch",),
        ("name:Transformer", "name:TransformerDecoder", "name:TransformerDecoderLayer"),
    )
    premise = {"torch": ">=1.2"}
    VALID = (
        # pytorch/examples' shape: the same module on both sides.
        Valid("""
            from torch import nn
            class Translator(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.src_embedding = nn.Embedding(1000, 512)
                    self.tgt_embedding = nn.Embedding(1000, 512)
                    self.pos_enc = PositionalEncoding(512, 0.1)
                    self.transformer = nn.Transformer(d_model=512)
                def forward(self, src, trg, tgt_mask):
                    src_emb = self.pos_enc(self.src_embedding(src))
                    tgt_emb = self.pos_enc(self.tgt_embedding(trg))
                    return self.transformer(src_emb, tgt_emb, tgt_mask=tgt_mask)
            """),
        # A learned table added to both sides.
        Valid("""
            import torch
            from torch import nn
            class M(nn.Module):
                def __init__(self, d=64, max_len=128):
                    super().__init__()
                    self.emb = nn.Linear(8, d)
                    self.positional_encoding = nn.Parameter(torch.zeros(1, max_len, d))
                    self.transformer = nn.Transformer(d_model=d, batch_first=True)
                def forward(self, src, tgt, mask):
                    src = self.emb(src) + self.positional_encoding[:, :src.size(1)]
                    tgt = self.emb(tgt) + self.positional_encoding[:, :tgt.size(1)]
                    return self.transformer(src, tgt, tgt_mask=mask)
            """),
        # The target arrives embedded: the caller may have added positions.
        Valid("""
            from torch import nn
            class M(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.pos = PositionalEncoding(512)
                    self.transformer = nn.Transformer()
                def forward(self, src, tgt_emb, tgt_mask):
                    return self.transformer(self.pos(src), tgt_emb, tgt_mask=tgt_mask)
            """),
        # An embedding class of another module: cannot see whether it adds positions.
        Valid("""
            from torch import nn
            from mymodels import Embeddings
            class M(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.src_embed = nn.Embedding(100, 512)
                    self.tgt_embed = Embeddings(100, 512)
                    self.pe = PositionalEncoding(512)
                    self.transformer = nn.Transformer()
                def forward(self, src, tgt, tgt_mask):
                    return self.transformer(self.pe(self.src_embed(src)), self.tgt_embed(tgt), tgt_mask=tgt_mask)
            """),
        # Positions added inside the target's own embedding class (token + learned position table).
        Valid("""
            import torch
            from torch import nn
            class DecoderEmbedding(nn.Module):
                def __init__(self, vocab, d, max_len):
                    super().__init__()
                    self.tok = nn.Embedding(vocab, d)
                    self.pos = nn.Embedding(max_len, d)
                def forward(self, ids):
                    return self.tok(ids) + self.pos(torch.arange(ids.size(1), device=ids.device))
            class M(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.src_pos = PositionalEncoding(256)
                    self.src_emb = nn.Embedding(100, 256)
                    self.tgt_emb = DecoderEmbedding(100, 256, 512)
                    self.transformer = nn.Transformer(256, 4, batch_first=True)
                def forward(self, src, tgt, tgt_mask):
                    return self.transformer(self.src_pos(self.src_emb(src)), self.tgt_emb(tgt), tgt_mask=tgt_mask)
            """),
        # A custom decoder may carry its own (rotary, relative) positions.
        Valid("""
            from torch import nn
            class M(nn.Module):
                def __init__(self, decoder):
                    super().__init__()
                    self.emb = nn.Embedding(100, 512)
                    self.pos = PositionalEncoding(512)
                    self.transformer = nn.Transformer(custom_decoder=decoder)
                def forward(self, src, tgt, tgt_mask):
                    return self.transformer(self.pos(self.emb(src)), self.emb(tgt), tgt_mask=tgt_mask)
            """),
        # DETR: learned queries, no token embedding on the target side.
        Valid("""
            import torch
            from torch import nn
            class Detr(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.query_embed = nn.Embedding(100, 256)
                    self.pos = PositionalEncoding(256)
                    self.transformer = nn.Transformer(256, 8)
                def forward(self, features):
                    query = self.query_embed.weight.unsqueeze(1).repeat(1, features.size(1), 1)
                    return self.transformer(self.pos(features), torch.zeros_like(query))
            """),
    )
    INVALID = (
        Invalid(
            """
            import math
            from torch import nn
            class Seq2Seq(nn.Module):
                def __init__(self, vocab, d_model=512):
                    super().__init__()
                    self.d_model = d_model
                    self.src_embed = nn.Embedding(vocab, d_model)
                    self.tgt_embed = nn.Embedding(vocab, d_model)
                    self.pos_encoder = PositionalEncoding(d_model)
                    self.transformer = nn.Transformer(d_model)
                def forward(self, src, tgt, tgt_mask):
                    src = self.pos_encoder(self.src_embed(src) * math.sqrt(self.d_model))
                    tgt = self.tgt_embed(tgt) * math.sqrt(self.d_model)
                    return self.transformer(src, tgt, tgt_mask=tgt_mask)
            """,
            line=14,
            message="while the source passes through `self.pos_encoder(",
            fix="""
            import math
            from torch import nn
            class Seq2Seq(nn.Module):
                def __init__(self, vocab, d_model=512):
                    super().__init__()
                    self.d_model = d_model
                    self.src_embed = nn.Embedding(vocab, d_model)
                    self.tgt_embed = nn.Embedding(vocab, d_model)
                    self.pos_encoder = PositionalEncoding(d_model)
                    self.transformer = nn.Transformer(d_model)
                def forward(self, src, tgt, tgt_mask):
                    src = self.pos_encoder(self.src_embed(src) * math.sqrt(self.d_model))
                    tgt = self.tgt_embed(tgt) * math.sqrt(self.d_model)
                    return self.transformer(src, self.pos_encoder(tgt), tgt_mask=tgt_mask)
            """,
            applicability=Applicability.UNSAFE,
        ),
        # A sin/cos buffer added to the source only; no callable to reuse, so no fix.
        Invalid(
            """
            import math
            import torch
            from torch import nn
            class Model(nn.Module):
                def __init__(self, vocab, d=256, max_len=1000):
                    super().__init__()
                    pe = torch.zeros(max_len, 1, d)
                    position = torch.arange(max_len).unsqueeze(1)
                    div = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
                    pe[:, 0, 0::2] = torch.sin(position * div)
                    pe[:, 0, 1::2] = torch.cos(position * div)
                    self.register_buffer("pe", pe)
                    self.embedding = nn.Embedding(vocab, d)
                    self.dropout = nn.Dropout(0.1)
                    self.transformer = nn.Transformer(d, 4)
                def forward(self, src, tgt, tgt_mask):
                    src = self.dropout(self.embedding(src) + self.pe[: src.size(0)])
                    tgt = self.dropout(self.embedding(tgt))
                    return self.transformer(src, tgt, tgt_mask=tgt_mask)
            """,
            line=19,
            message="the position buffer `pe`",
        ),
        # A decoder-only path (greedy decoding) that forgets the model's positional encoding.
        Invalid(
            """
            from torch import nn
            class Captioner(nn.Module):
                def __init__(self, vocab):
                    super().__init__()
                    self.embed = nn.Embedding(vocab, 512)
                    self.positional = PositionalEncoding(512)
                    self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(512, 8), 6)
                def step(self, ys, memory, mask):
                    return self.decoder(self.embed(ys), memory, tgt_mask=mask)
            """,
            line=9,
            message="the model holds `self.positional`",
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        positional = ctx.get(Positional)
        for call in ctx.nodes(cst.Call):
            found = decoder_call(ctx, call)
            if found is None or found.custom is not False:
                continue
            arg = found.binding.arg("tgt")
            if arg is None:
                continue
            target = positional.flow(arg.value)
            if target.applied is not None or not target.complete or target.embedded is None \
                    or target.outside is not None:
                continue
            evidence = self._evidence(ctx, positional, found)
            if evidence is None:
                continue
            text, source = evidence
            yield ctx.report(
                arg,
                f"the target `{ctx.code(arg.value)}` reaches `{ctx.code(call.func)}` without a positional "
                f"encoding (it is built from `{ctx.code(target.embedded)}` with no position added), {text}: "
                f"`{found.label}` adds none itself, so the decoder cannot tell target positions apart",
                fix=self._fix(ctx, found, arg, source),
                help="Apply the same positional encoding to the target embedding as to the source",
            )

    @staticmethod
    def _evidence(ctx: Context, positional: Positional, found: DecoderCall
                  ) -> Optional[Tuple[str, Optional[Flow]]]:
        """What shows the model means to use positions: the source's encoding, or one it holds."""
        src = found.binding.value("src") if TRANSFORMER in found.kinds else None
        if src is not None:
            source = positional.flow(src)
            if source.applied is not None:
                where = ctx.code(source.applied)
                where = where if len(where) <= 60 else where[:57] + "..."
                return f"while the source passes through `{where}` ({source.reason})", source
        cls = ctx.enclosing(found.call, cst.ClassDef)
        for attr, reason in (positional.attributes(cls) if cls is not None else {}).items():
            return f"while the model holds `self.{attr}` ({reason})", None
        return None

    @staticmethod
    def _fix(ctx: Context, found: DecoderCall, arg: cst.Arg, source: Optional[Flow]) -> Optional[Fix]:
        applied = source.applied if source is not None else None
        if not isinstance(applied, cst.Call) or len(applied.args) != 1 or applied.args[0].keyword \
                or applied.args[0].star or isinstance(applied.func, cst.Call):
            return None
        if any(isinstance(a, (cst.For, cst.While)) for a in ctx.ancestors(found.call)):
            return None
        return ctx.fix("Apply the source's positional encoding to the target", Applicability.UNSAFE,
                       ctx.replace(arg.value, f"{ctx.code(applied.func)}({ctx.code(arg.value)})"))
