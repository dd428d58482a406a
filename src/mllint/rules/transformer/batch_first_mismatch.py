from __future__ import annotations

from typing import Dict, Iterator, Optional, Set, Tuple

import libcst as cst

from mllint.analysis.layouts import BATCH_FIRST, Layout, Layouts
from mllint.analysis.masks import SDPA_NAME, AttentionSlots, TorchCall
from mllint.core.context import Context
from mllint.core.diagnostic import Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid

# The sequence inputs of torch 2.13.0's transformer modules and MHA (nn/modules/transformer.py,
# activation.py): (S, N, E) when batch_first=False, (N, S, E) when True.
INPUTS: Dict[str, Tuple[str, ...]] = {
    "torch.nn.Transformer": ("src", "tgt"),
    "torch.nn.TransformerEncoder": ("src",),
    "torch.nn.TransformerEncoderLayer": ("src",),
    "torch.nn.TransformerDecoder": ("tgt", "memory"),
    "torch.nn.TransformerDecoderLayer": ("tgt", "memory"),
    "torch.nn.MultiheadAttention": ("query", "key", "value"),
}


class BatchFirstMismatch(Rule):
    """## What it does
    Checks for inputs of a known layout fed to a torch `nn.Transformer`, `nn.TransformerEncoder`,
    `nn.TransformerDecoder`, one of their layers, or `nn.MultiheadAttention` built with the other
    `batch_first` setting. The layout must be proven (`mllint.analysis.layouts`): token ids from
    `pad_sequence(..., batch_first=True)` (batch-first) or `pad_sequence(...)` without it
    (sequence-first), `input_ids` of a tokenizer call with `return_tensors="pt"` or of a
    collated batch (batch-first), or the output of another torch transformer module (its own
    `batch_first`), followed through embeddings, positional encodings, slices, local
    assignments, a `collate_fn`'s returned tuple and one level of a model's `forward`, and
    flipped by `.transpose(0, 1)`, `.t()`, `.T` or `.permute(1, 0, ...)`.

    ## Why is this bad?
    torch's transformer modules and `nn.MultiheadAttention` take `(seq, batch, feature)` unless
    built with `batch_first=True`: `batch_first: bool = False` in `Transformer.__init__`,
    `TransformerEncoderLayer.__init__`, `TransformerDecoderLayer.__init__` and
    `MultiheadAttention.__init__` (torch 2.13.0 `nn/modules/transformer.py`, `activation.py`; the
    same default since `batch_first` was added in 1.9). A `(batch, seq, feature)` tensor fed to
    a sequence-first module is not rejected when no masks are passed: the batch axis is read as
    the sequence, so attention mixes different examples and each sequence's tokens never see
    each other. Outputs then depend on which examples share a batch.

    Inputs whose layout cannot be proven are left alone, including any `view`, `reshape` or
    `unsqueeze` on the way.

    ## Example
    ```python
    src = pad_sequence(batch, batch_first=True, padding_value=PAD)  # (batch, seq)
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(512, 8), 6)
    out = encoder(pos_encoder(embed(src)))
    ```

    ## Use instead
    ```python
    src = pad_sequence(batch, batch_first=True, padding_value=PAD)  # (batch, seq)
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(512, 8, batch_first=True), 6)
    out = encoder(pos_encoder(embed(src)))
    ```

    ## Fix safety
    There is no fix: the right repair is either `batch_first=True` on the constructor or a
    transpose of the input, and positional encodings or masks built for one layout may need to
    change with it.

    ## References
    - torch `nn/modules/transformer.py`, `Transformer.__init__` and the layer constructors (2.13.0)
    - torch `nn/modules/activation.py`, `MultiheadAttention.__init__` and `forward` docstring
    - torch `nn/utils/rnn.py`, `pad_sequence` (`batch_first=False` by default)
    """

    code = "MLL308"
    name = "batch-first-mismatch"
    summary = "batch-first input fed to a sequence-first torch transformer module, or the reverse"
    severity = Severity.WARNING
    tags = ("correctness", "torch")
    triggers = (("Transformer", "MultiheadAttention"),)
    requires = (("import:torch",), (
        "name:Transformer", "name:TransformerEncoder", "name:TransformerDecoder", "name:TransformerEncoderLayer", "name:TransformerDecoderLayer",
        "name:MultiheadAttention"))
    premise = {"torch": ">=1.9"}
    VALID = (
        Valid("""
            import torch
            from torch import nn
            from torch.nn.utils.rnn import pad_sequence
            encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(512, 8, batch_first=True), 6)
            embed = nn.Embedding(1000, 512)
            src = pad_sequence(seqs, batch_first=True, padding_value=0)
            out = encoder(embed(src))
            """),
        # Transposed on the way.
        Valid("""
            from torch import nn
            from torch.nn.utils.rnn import pad_sequence
            encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(512, 8), 6)
            embed = nn.Embedding(1000, 512)
            src = pad_sequence(seqs, batch_first=True)
            out = encoder(embed(src).transpose(0, 1))
            """),
        # The tutorial's layout: pad_sequence without batch_first, default module.
        Valid("""
            from torch import nn
            from torch.nn.utils.rnn import pad_sequence
            model = nn.Transformer(d_model=512)
            embed = nn.Embedding(1000, 512)
            src = pad_sequence(src_list, padding_value=1)
            tgt = pad_sequence(tgt_list, padding_value=1)
            out = model(embed(src), embed(tgt[:-1]))
            """),
        # Unknown layout: reshaped, or a parameter.
        Valid("""
            from torch import nn
            mha = nn.MultiheadAttention(256, 4)
            def attend(x):
                return mha(x, x, x)[0]
            y, _ = mha(h.view(B, T, -1), h.view(B, T, -1), h.view(B, T, -1))
            """),
        # Tokenizer ids into a batch_first model.
        Valid("""
            import torch
            from torch import nn
            layer = nn.TransformerEncoderLayer(256, 4, batch_first=True)
            embed = nn.Embedding(30522, 256)
            enc = tokenizer(texts, padding=True, return_tensors="pt")
            out = layer(embed(enc["input_ids"]))
            """),
    )
    INVALID = (
        Invalid(
            """
            from torch import nn
            from torch.nn.utils.rnn import pad_sequence
            encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(512, 8), 6)
            embed = nn.Embedding(1000, 512)
            src = pad_sequence(seqs, batch_first=True)
            out = encoder(embed(src))
            """,
            line=6,
            message="batch_first=False (the default)",
        ),
        # Tokenizer output into a default MHA.
        Invalid(
            """
            import torch
            mha = torch.nn.MultiheadAttention(256, 4)
            embed = torch.nn.Embedding(30522, 256)
            enc = tokenizer(texts, padding=True, return_tensors="pt")
            h = embed(enc.input_ids)
            out, weights = mha(h, h, h)
            """,
            line=6,
            message="tokenizer call",
        ),
        # Sequence-first ids into a batch_first module.
        Invalid(
            """
            from torch import nn
            from torch.nn.utils.rnn import pad_sequence
            model = nn.Transformer(d_model=256, nhead=4, batch_first=True)
            embed = nn.Embedding(1000, 256)
            src = pad_sequence(src_list, padding_value=1)
            tgt = pad_sequence(tgt_list, padding_value=1)
            out = model(embed(src), embed(tgt[:-1]))
            """,
            line=7,
            count=2,
            message="batch_first=True",
        ),
        # Encoder and decoder built differently: the memory has the encoder's layout.
        Invalid(
            """
            from torch import nn
            class Model(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(256, 4, batch_first=True), 3)
                    self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(256, 4), 3)
                def forward(self, src, tgt):
                    memory = self.encoder(src)
                    return self.decoder(tgt, memory)
            """,
            line=9,
            message="the output of `self.encoder`",
        ),
        # A collate_fn padding batch-first, the model's forward in between.
        Invalid(
            """
            import torch
            from torch import nn
            from torch.nn.utils.rnn import pad_sequence
            from torch.utils.data import DataLoader
            class Seq2Seq(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.emb = nn.Embedding(1000, 256)
                    self.transformer = nn.Transformer(d_model=256, nhead=4)
                def forward(self, src, tgt):
                    return self.transformer(self.emb(src), self.emb(tgt))
            def collate(batch):
                src = pad_sequence([s for s, _ in batch], batch_first=True, padding_value=0)
                tgt = pad_sequence([t for _, t in batch], batch_first=True, padding_value=0)
                return src, tgt
            model = Seq2Seq()
            loader = DataLoader(data, batch_size=32, collate_fn=collate)
            for src, tgt in loader:
                logits = model(src, tgt[:, :-1])
            """,
            line=19,
            count=2,
            message="through `Seq2Seq.forward`",
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        slots = ctx.get(AttentionSlots)
        layouts = ctx.get(Layouts)
        for torch_call in slots.torch_calls:
            batch_first = self._batch_first(slots, torch_call)
            if batch_first is None:
                continue
            seen: Set[str] = set()
            for param in INPUTS[torch_call.callee]:
                arg = torch_call.binding.args.get(param)
                if arg is None or ctx.code(arg.value) in seen:
                    continue
                seen.add(ctx.code(arg.value))
                layout = layouts.layout(arg.value)
                if layout is not None and (layout.kind == BATCH_FIRST) != batch_first:
                    yield self._report(ctx, arg, arg, param, torch_call, batch_first, layout, None)
        for call in ctx.nodes(cst.Call):
            local = slots.local_call(call)
            if local is None or local.binding.opaque:
                continue
            passed = {name: a.value for name, a in local.binding.args.items()}
            for torch_call in slots.inside(local.method):
                batch_first = self._batch_first(slots, torch_call)
                if batch_first is None:
                    continue
                for param in INPUTS[torch_call.callee]:
                    arg = torch_call.binding.args.get(param)
                    if arg is None or layouts.layout(arg.value) is not None:
                        continue  # judged at the torch call
                    layout = layouts.layout(arg.value, passed)
                    if layout is not None and (layout.kind == BATCH_FIRST) != batch_first:
                        via = f"{local.cls.name.value}.{local.method.name.value}"
                        yield self._report(ctx, call, arg, param, torch_call, batch_first, layout, via)

    @staticmethod
    def _batch_first(slots: AttentionSlots, torch_call: TorchCall) -> Optional[bool]:
        return None if torch_call.callee == SDPA_NAME else slots.batch_first(torch_call)

    def _report(self, ctx: Context, node: cst.CSTNode, arg: cst.Arg, param: str, torch_call: TorchCall,
                batch_first: bool, layout: Layout, via: Optional[str]) -> Diagnostic:
        callee = torch_call.callee.replace("torch.nn.", "nn.")
        line = ctx.locator.location(ctx.span(layout.node)[0]).row
        transposed = ", transposed once on the way" if layout.transposed else ""
        if batch_first:
            problem = ("is sequence-first but the module is built with batch_first=True: it reads dim 0 as "
                       "the batch")
        else:
            problem = ("is batch-first but the module is built with batch_first=False (the default): it reads "
                       "dim 0 as the sequence")
        where = f" through `{via}`" if via else ""
        message = (f"`{ctx.code(arg.value)}`, the `{param}` of `{callee}`{where}, {problem}, so attention runs "
                   f"across the examples of the batch (layout from {layout.reason}, line {line}{transposed})")
        return ctx.report(node, message,
                          help="Build the module with the layout the data has (`batch_first=True` for "
                               "(batch, seq, feature)), or transpose the input with `.transpose(0, 1)`")
