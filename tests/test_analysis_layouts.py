"""Tensor layout provenance (mllint.analysis.layouts)."""

from __future__ import annotations

import textwrap

import libcst as cst
import pytest

from mllint import Settings
from mllint.analysis.layouts import BATCH_FIRST, SEQ_FIRST, Layouts
from mllint.core.context import Context


def ctx_for(code: str) -> Context:
    code = textwrap.dedent(code)
    return Context(code, "t.py", cst.parse_module(code), Settings())


def last_arg(ctx: Context, func: str) -> cst.BaseExpression:
    """The first argument of the last call of ``func``."""
    calls = [c for c in ctx.nodes(cst.Call) if ctx.code(c.func) == func]
    return calls[-1].args[0].value


HEADER = """
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pad_sequence
    from torch.utils.data import DataLoader
    embed = nn.Embedding(100, 16)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, batch_first=True), 2)
"""


@pytest.mark.parametrize("body, expected", [
    ("x = pad_sequence(seqs, batch_first=True)\nuse(x)", BATCH_FIRST),
    ("x = pad_sequence(seqs, padding_value=0)\nuse(x)", SEQ_FIRST),
    ("x = pad_sequence(seqs, True)\nuse(x)", BATCH_FIRST),
    ("x = pad_sequence(seqs, batch_first=flag)\nuse(x)", None),
    ("x = pad_sequence(seqs, batch_first=True)\nuse(embed(x).transpose(0, 1))", SEQ_FIRST),
    ("x = pad_sequence(seqs, batch_first=True)\nuse(embed(x.t()).transpose(1, 0).T)", SEQ_FIRST),
    ("x = pad_sequence(seqs, batch_first=True)\nuse(embed(x).permute(1, 0, 2))", SEQ_FIRST),
    ("x = pad_sequence(seqs, batch_first=True)\nuse(embed(x).transpose(1, 2))", None),
    ("x = pad_sequence(seqs, batch_first=True)\nuse(embed(x[:, :-1]).to('cuda') * 4.0)", BATCH_FIRST),
    ("x = pad_sequence(seqs, batch_first=True)\nuse(embed(x).view(-1, 16))", None),
    ("x = pad_sequence(seqs, batch_first=True)\nuse(x[0])", None),
    ("e = tokenizer(texts, padding=True, return_tensors='pt')\nuse(embed(e['input_ids']))", BATCH_FIRST),
    ("e = tokenizer(texts, padding=True, return_tensors='pt')\nuse(e.input_ids)", BATCH_FIRST),
    ("e = tokenizer(texts, padding=True)\nuse(e['input_ids'])", None),
    ("for batch in loader:\n    use(batch['input_ids'])", BATCH_FIRST),
    ("use(enc(h))", BATCH_FIRST),
    ("use(unknown_module(h))", None),
])
def test_layout(body: str, expected) -> None:
    ctx = ctx_for(HEADER + textwrap.indent(body, "    "))
    layout = ctx.get(Layouts).layout(last_arg(ctx, "use"))
    assert (layout.kind if layout else None) == expected


def test_helper_tuple_and_collate_fn() -> None:
    ctx = ctx_for(HEADER + """
    def collate(batch):
        a = pad_sequence([s for s, _ in batch], batch_first=True)
        b = pad_sequence([t for _, t in batch])
        return a, b
    def pair(seqs):
        return pad_sequence(seqs).t(), pad_sequence(seqs)
    for i, (src, tgt) in enumerate(DataLoader(data, collate_fn=collate)):
        use(src)
        use2(tgt)
        p, q = pair(data)
        use3(p)
        use4(q)
    """)
    layouts = ctx.get(Layouts)
    assert layouts.layout(last_arg(ctx, "use")).kind == BATCH_FIRST
    assert layouts.layout(last_arg(ctx, "use2")).kind == SEQ_FIRST
    transposed = layouts.layout(last_arg(ctx, "use3"))
    assert transposed.kind == BATCH_FIRST and transposed.transposed
    assert layouts.layout(last_arg(ctx, "use4")).kind == SEQ_FIRST


def test_rebinding_after_unpacking_is_unknown() -> None:
    ctx = ctx_for(HEADER + """
    def collate(batch):
        return pad_sequence(batch, batch_first=True), None
    for src, _ in DataLoader(data, collate_fn=collate):
        src += 1
        use(src)
    """)
    assert ctx.get(Layouts).layout(last_arg(ctx, "use")) is None


def test_parameters_bound_by_caller() -> None:
    ctx = ctx_for(HEADER + """
    def forward(ids):
        use(embed(ids))
    """)
    layouts = ctx.get(Layouts)
    arg = last_arg(ctx, "use")
    assert layouts.layout(arg) is None
    bound = cst.parse_expression("pad_sequence(seqs, batch_first=True)")
    assert layouts.layout(arg, {"ids": bound}).kind == BATCH_FIRST
