"""The shared analysis layer: names, signatures, receiver kinds, def-use."""

from __future__ import annotations

import textwrap

import libcst as cst

from mllint import Settings
from mllint.analysis.dataflow import Assignments
from mllint.analysis.instances import UNKNOWN, Instances
from mllint.analysis.names import canonical
from mllint.analysis.signatures import DECODER_FORWARD, TRANSFORMER_FORWARD, bind
from mllint.core.context import Context


def ctx_for(code: str) -> Context:
    code = textwrap.dedent(code)
    return Context(code, "t.py", cst.parse_module(code), Settings())


def call_named(ctx: Context, text: str) -> cst.Call:
    return next(c for c in ctx.nodes(cst.Call) if ctx.code(c).startswith(text))


def test_canonical_names():
    assert canonical("torch.nn.modules.transformer.Transformer") == "torch.nn.Transformer"
    assert canonical("transformers.data.data_collator.DataCollatorForLanguageModeling") == \
        "transformers.DataCollatorForLanguageModeling"
    assert canonical("transformers.models.auto.AutoTokenizer.from_pretrained") == \
        "transformers.AutoTokenizer.from_pretrained"
    assert canonical("trl.trainer.sft_trainer.DataCollatorForLanguageModeling") == \
        "trl.trainer.sft_trainer.DataCollatorForLanguageModeling"


def test_every_import_spelling_resolves():
    ctx = ctx_for("""
        import torch
        import torch.nn as nn
        from torch import nn as tnn
        from torch.nn import Transformer as T
        import transformers as tf
        try:
            from transformers import DataCollatorForLanguageModeling as DC
        except ImportError:
            from mylib import DataCollatorForLanguageModeling as DC
        a = torch.nn.Transformer
        b = nn.Transformer
        c = tnn.Transformer
        d = T
        e = tf.DataCollatorForLanguageModeling
        f = DC
    """)
    names = ctx.names
    values = {a.targets[0].target.value: a.value for a in ctx.nodes(cst.Assign)}
    for key in "abcd":
        assert names.resolve(values[key]) == {"torch.nn.Transformer"}, key
    assert names.resolve(values["e"]) == {"transformers.DataCollatorForLanguageModeling"}
    assert names.resolve(values["f"]) == {"transformers.DataCollatorForLanguageModeling",
                                          "mylib.DataCollatorForLanguageModeling"}


def test_star_import_candidates():
    ctx = ctx_for("from transformers import *\nx = AutoTokenizer\n")
    assert ctx.names.resolve(ctx.nodes(cst.Assign)[0].value) == {"transformers.AutoTokenizer"}


def test_binding_positional_keyword_and_splats():
    ctx = ctx_for("m(src, tgt, None, causal, pad, tgt_key_padding_mask=t)\nd(x, mem, **kw)\n")
    binding = bind(call_named(ctx, "m("), TRANSFORMER_FORWARD)
    assert ctx.code(binding.value("memory_mask")) == "pad"
    assert ctx.code(binding.value("tgt_key_padding_mask")) == "t"
    assert not binding.is_keyword("memory_mask") and not binding.opaque
    splat = bind(call_named(ctx, "d("), DECODER_FORWARD)
    assert splat.opaque and splat.maybe_passed("memory_mask") and not splat.passed("memory_mask")


def test_receiver_kinds():
    ctx = ctx_for("""
        from torch import nn
        class Base(nn.TransformerDecoder):
            pass
        class M(nn.Module):
            def __init__(self):
                self.t = nn.Transformer()
                self.d = Base(layer, 2)
                self.layers = nn.ModuleList([nn.TransformerDecoderLayer(8, 2) for _ in range(2)])
                self.x = make()
            def forward(self, a):
                self.t(a)
                self.t.decoder(a)
                self.d(a)
                self.x(a)
                for layer in self.layers:
                    layer(a)
    """)
    instances = ctx.get(Instances)
    kinds = {ctx.code(c): instances.kinds(c.func, c) for c in ctx.nodes(cst.Call)
             if ctx.code(c).endswith("(a)")}
    assert kinds == {
        "self.t(a)": {"torch.nn.Transformer"},
        "self.t.decoder(a)": {"torch.nn.TransformerDecoder"},
        "self.d(a)": {"torch.nn.TransformerDecoder"},
        "self.x(a)": {UNKNOWN},
        "layer(a)": {"torch.nn.TransformerDecoderLayer"},
    }


def test_reaching_assignment_is_the_last_one_before_the_use():
    ctx = ctx_for("""
        def f(src):
            mask = a
            mask = (src == PAD).to(device)
            use(mask)
            mask = b
    """)
    use = call_named(ctx, "use(")
    chain = ctx.get(Assignments).trace(use.args[0].value)
    assert [ctx.code(step) for step in chain] == ["mask", "(src == PAD).to(device)", "(src == PAD)"]
