"""Positional-encoding analysis (mllint.analysis.positional), ``instances.constructor_of``, and the
MLL301/MLL303 behaviour their VALID/INVALID cases cannot express (when a fix is withheld)."""

from __future__ import annotations

import textwrap

import libcst as cst

from mllint import Settings, lint_source
from mllint.analysis.instances import Instances, constructor_of
from mllint.analysis.positional import Positional
from mllint.core.context import Context
from mllint.settings import parse_version


def ctx_for(code: str) -> Context:
    code = textwrap.dedent(code)
    return Context(code, "t.py", cst.parse_module(code), Settings())


def class_named(ctx: Context, name: str) -> cst.ClassDef:
    return next(c for c in ctx.nodes(cst.ClassDef) if c.name.value == name)


def returned(ctx: Context, function: str) -> cst.BaseExpression:
    """The value of the first ``return`` in the function named ``function``."""
    for node in ctx.nodes(cst.Return):
        owner = ctx.enclosing(node, cst.FunctionDef)
        if owner is not None and owner.name.value == function:
            return node.value
    raise AssertionError(function)


MODELS = """
    import math
    import torch
    from torch import nn
    from mylib import PosEnc, Embeddings

    class Sinusoid(nn.Module):
        def __init__(self, d):
            super().__init__()
            pos = torch.arange(100).unsqueeze(1)
            table = torch.zeros(100, d)
            table[:, 0::2] = torch.sin(pos)
            self.register_buffer("table", table)
        def forward(self, x):
            return x + self.table[: x.size(0)]

    class Buffered(nn.Module):
        def __init__(self, table):
            super().__init__()
            self.register_buffer("pe", table)
        def forward(self, x):
            return x + self.pe

    class Learned(nn.Module):
        def __init__(self, vocab, d):
            super().__init__()
            self.tok = nn.Embedding(vocab, d)
            self.steps = nn.Embedding(512, d)
        def forward(self, ids):
            return self.tok(ids) + self.steps(torch.arange(ids.size(1)))

    class TokenEmbedding(nn.Module):
        def __init__(self, vocab, d):
            super().__init__()
            self.embedding = nn.Embedding(vocab, d)
            self.d = d
        def forward(self, ids):
            return self.embedding(ids) * math.sqrt(self.d)

    class FeedForward(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.lin = nn.Linear(d, d)
        def forward(self, x):
            return self.lin(x)

    class Model(nn.Module):
        def __init__(self, vocab, d):
            super().__init__()
            self.src_emb = TokenEmbedding(vocab, d)
            self.tgt_emb = TokenEmbedding(vocab, d)
            self.proj = nn.Linear(8, d)
            self.pos = Sinusoid(d)
            self.imported = PosEnc(d)
            self.pos_drop = nn.Dropout(0.1)
            self.position_wise = FeedForward(d)
            self.pos_table = nn.Parameter(torch.zeros(1, 100, d))
            self.other = Embeddings(vocab, d)
            self.transformer = nn.Transformer(d)
        def embed(self, ids):
            return self.pos(self.tgt_emb(ids))
        def source(self, src):
            return self.pos(self.src_emb(src) * 2)
        def target(self, tgt):
            return self.pos_drop(self.tgt_emb(tgt.long()).transpose(0, 1))
        def through_helper(self, tgt):
            return self.embed(tgt)
        def table_added(self, x):
            return self.proj(x) + self.pos_table[:, : x.size(1)]
        def unknown_call(self, tgt):
            return scale(self.tgt_emb(tgt))
        def unknown_module(self, tgt):
            return self.other(tgt)
        def raw(self, tgt):
            return self.pos_drop(tgt)
        def projected(self, x):
            return self.position_wise(self.proj(x))
        def sincos_function(self, x, h, w):
            return x + build_2d_sincos_position_embedding(h, w)
"""


def test_class_evidence():
    ctx = ctx_for(MODELS)
    pos = ctx.get(Positional)
    assert "sin/cos" in pos.class_evidence(class_named(ctx, "Sinusoid"))
    assert "buffer `pe`" in pos.class_evidence(class_named(ctx, "Buffered"))
    assert "torch.arange" in pos.class_evidence(class_named(ctx, "Learned"))
    assert pos.class_evidence(class_named(ctx, "TokenEmbedding")) is None
    assert pos.class_evidence(class_named(ctx, "FeedForward")) is None
    # A model that holds and uses a positional encoding applies one.
    assert "self.pos" in pos.class_evidence(class_named(ctx, "Model"))


def test_attribute_evidence():
    ctx = ctx_for(MODELS)
    pos = ctx.get(Positional)
    attrs = pos.attributes(class_named(ctx, "Model"))
    assert "Sinusoid" in attrs["pos"]
    assert attrs["imported"] == "a `PosEnc`"  # imported: the class name is the evidence
    assert "nn.Parameter" in attrs["pos_table"]
    # Named like a table, but a dropout and a position-wise feed-forward block.
    assert "pos_drop" not in attrs and "position_wise" not in attrs
    assert "src_emb" not in attrs and "transformer" not in attrs


def test_flow_through_positional_encoding():
    ctx = ctx_for(MODELS)
    pos = ctx.get(Positional)
    source = pos.flow(returned(ctx, "source"))
    assert ctx.code(source.applied) == "self.pos(self.src_emb(src) * 2)"
    assert ctx.code(source.embedded) == "self.src_emb(src)" and source.tokens
    helper = pos.flow(returned(ctx, "through_helper"))  # one level of self.method(x)
    assert helper.applied is not None and helper.complete
    table = pos.flow(returned(ctx, "table_added"))
    assert ctx.code(table.applied) == "self.pos_table" and not table.tokens
    assert pos.flow(returned(ctx, "sincos_function")).applied is not None


def test_flow_demonstrably_without_positional_encoding():
    ctx = ctx_for(MODELS)
    pos = ctx.get(Positional)
    target = pos.flow(returned(ctx, "target"))
    assert target.applied is None and target.complete and target.outside is None
    assert ctx.code(target.embedded) == "self.tgt_emb(tgt.long())"
    projected = pos.flow(returned(ctx, "projected"))
    assert projected.applied is None and projected.complete and not projected.tokens


def test_flow_says_what_it_cannot_see():
    ctx = ctx_for(MODELS)
    pos = ctx.get(Positional)
    assert not pos.flow(returned(ctx, "unknown_call")).complete  # a function of this module
    assert not pos.flow(returned(ctx, "unknown_module")).complete  # a class of another module
    raw = pos.flow(returned(ctx, "raw"))  # arrives embedded from the caller
    assert raw.outside is not None and raw.outside.value == "tgt" and raw.embedded is None


def test_applications():
    ctx = ctx_for("""
        import torch
        from torch import nn
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.tok = nn.Embedding(100, 16)
                self.table = nn.Embedding(64, 16)
                self.pos_emb = nn.Embedding(64, 16)
            def a(self, x, positions):
                return self.tok(x) + self.pos_emb(positions)
            def b(self, x):
                return self.tok(x) + self.table(torch.arange(x.size(1)))
            def c(self, x, query_pos):
                return self.tok(x) + query_pos
            def d(self, x):
                return self.tok(x) + self.table(x)
    """)
    pos = ctx.get(Positional)
    assert pos.flow(returned(ctx, "a")).applied is not None
    assert "torch.arange" in pos.flow(returned(ctx, "b")).reason
    assert "query_pos" in pos.flow(returned(ctx, "c")).reason  # a parameter named like a table
    assert pos.flow(returned(ctx, "d")).applied is None  # a second token table, not positions


def test_constructor_of():
    ctx = ctx_for("""
        from torch import nn
        model = nn.Transformer(batch_first=True).to("cuda")
        class D(nn.Module):
            def __init__(self, layer):
                super().__init__()
                self.layers = nn.ModuleList([nn.TransformerDecoderLayer(8, 2) for _ in range(2)])
                self.given = layer
            def forward(self, x, memory, model):
                for layer in self.layers:
                    x = layer(x, memory)
                return self.given(x, memory), model(x, x)
    """)
    instances = ctx.get(Instances)
    calls = {ctx.code(c.func): c for c in ctx.nodes(cst.Call)}
    layer = constructor_of(instances, calls["layer"].func, calls["layer"])
    assert ctx.code(layer) == "nn.TransformerDecoderLayer(8, 2)"
    module_level = next(a for a in ctx.nodes(cst.Assign) if ctx.code(a.targets[0].target) == "model")
    assert ctx.code(constructor_of(instances, module_level.targets[0].target, module_level)) == \
        "nn.Transformer(batch_first=True)"
    assert constructor_of(instances, calls["self.given"].func, calls["self.given"]) is None
    # A parameter shadows the module-level instance of the same name.
    assert constructor_of(instances, calls["model"].func, calls["model"]) is None


# -- rule behaviour the VALID/INVALID tables cannot express ------------------------------------
SEQ2SEQ = """
    import torch
    {import_line}
    class Seq2Seq(nn.Module):
        def __init__(self, batch_first):
            super().__init__()
            self.emb = nn.Embedding(100, 64)
            self.transformer = nn.Transformer(64, 4, batch_first={batch_first})
        def forward(self, src, tgt):
            return self.transformer(self.emb(src), self.emb(tgt))
"""


def _findings(code: str, select: str, **settings):
    return lint_source(textwrap.dedent(code), "t.py", Settings(select=(select,), **settings))


def test_mll303_fix_needs_known_batch_first_and_torch_2():
    known = SEQ2SEQ.format(import_line="from torch import nn", batch_first="True")
    (finding,) = _findings(known, "MLL303")
    assert "tgt.size(1)" in finding.fix.edits[0].content
    (old_torch,) = _findings(known, "MLL303", target_versions={"torch": parse_version("1.13", "t")})
    assert old_torch.fix is None
    (unknown,) = _findings(SEQ2SEQ.format(import_line="from torch import nn", batch_first="batch_first"),
                           "MLL303")
    assert unknown.fix is None


def test_mll303_fix_uses_the_module_spelling():
    code = SEQ2SEQ.format(import_line="import torch.nn as nn\n    from torch.nn import Transformer",
                          batch_first="False")
    (finding,) = _findings(code, "MLL303")
    assert finding.fix.edits[0].content.startswith(", tgt_mask=Transformer.generate_square_subsequent_mask(")
    assert "tgt.size(0)" in finding.fix.edits[0].content


def test_mll301_no_fix_inside_a_loop():
    # Wrapping the target inside a loop body could apply the encoding once per step.
    code = """
        from torch import nn
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(100, 64)
                self.pos = PositionalEncoding(64)
                self.transformer = nn.Transformer(64, 4)
            def forward(self, src, tgts, mask):
                memory_in = self.pos(self.emb(src))
                return [self.transformer(memory_in, self.emb(t), tgt_mask=mask) for t in tgts]
            def loop(self, src, tgt, mask, n):
                for _ in range(n):
                    out = self.transformer(self.pos(self.emb(src)), self.emb(tgt), tgt_mask=mask)
                return out
    """
    comprehension, loop = _findings(code, "MLL301")
    assert comprehension.location.row == 11 and comprehension.fix is not None
    assert loop.location.row == 14 and loop.fix is None


def test_mll303_decoding_loops():
    code = """
        import torch
        from torch import nn
        class Generator(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(100, 64)
                self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(64, 4, batch_first=True), 2)
            def prefix(self, memory, ys, steps):
                next_token = ys[:, -1:]
                for _ in range(steps):
                    ys = torch.cat([ys, next_token], dim=1)
                    out = self.decoder(self.emb(ys), memory)
                    next_token = out[:, -1:].argmax(-1)
                return ys
            def last_token_only(self, memory, ys, steps):
                for _ in range(steps):
                    out = self.decoder(self.emb(ys[:, -1:]), memory)
                    ys = torch.cat([ys, out.argmax(-1)], dim=1)
                return ys
    """
    (finding,) = _findings(code, "MLL303")
    assert finding.location.row == 13 and "`ys` grows" in finding.message
