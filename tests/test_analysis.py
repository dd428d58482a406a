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


# -- Hugging Face receivers, batches, def-use ------------------------------------------------------

from mllint.analysis.batches import Batches, Provenance  # noqa: E402
from mllint.analysis.hf import DECODER_ONLY, ENCODER_DECODER, families, is_hf_model  # noqa: E402


def _generate_receiver_kinds(code: str):
    ctx = ctx_for(code)
    call = next(c for c in ctx.nodes(cst.Call)
                if isinstance(c.func, cst.Attribute) and c.func.attr.value == "generate")
    return ctx.get(Instances).kinds(call.func.value, call)


def test_hf_model_kinds_through_loaders_wrappers_and_attributes():
    kinds = _generate_receiver_kinds("""
        import transformers as tf
        from peft import get_peft_model
        model = tf.AutoModelForCausalLM.from_pretrained("m")
        model = get_peft_model(model, cfg)
        model = model.to("cuda")
        model.eval()
        out = model.generate(**x)
    """)
    assert kinds == {"transformers.AutoModelForCausalLM"}
    assert families(kinds) == {DECODER_ONLY}
    kinds = _generate_receiver_kinds("""
        import lightning as L
        from transformers import T5ForConditionalGeneration
        class M(L.LightningModule):
            def __init__(self):
                self.model = T5ForConditionalGeneration.from_pretrained("t5-small")
            def validation_step(self, batch, idx):
                return self.model.generate(batch["input_ids"])
    """)
    assert families(kinds) == {ENCODER_DECODER}


def test_home_grown_and_vllm_generate_are_not_hf():
    assert not is_hf_model(_generate_receiver_kinds("""
        class GPT:
            def generate(self, idx): ...
        model = GPT()
        model.generate(x)
    """))
    assert not is_hf_model(_generate_receiver_kinds("""
        from vllm import LLM
        llm = LLM(model="m")
        llm.generate(prompts)
    """))
    assert not is_hf_model(_generate_receiver_kinds("""
        def run(model, x):
            return model.generate(x)
    """))


def _origin(code: str):
    ctx = ctx_for(code)
    call = next(c for c in ctx.nodes(cst.Call)
                if isinstance(c.func, cst.Attribute) and c.func.attr.value == "generate")
    arg = call.args[0].value
    return ctx, ctx.get(Batches).origin(arg)


def test_batch_provenance():
    cases = {
        'inputs = tok(prompts, padding=True, return_tensors="pt").to(dev)\nm.generate(inputs.input_ids)':
            Provenance.PADDED,
        'inputs = tok(["a", "b"], padding="longest", return_tensors="pt")\nm.generate(inputs["input_ids"])':
            Provenance.PADDED,
        'inputs = tok([prompt], padding=True, return_tensors="pt")\nm.generate(inputs.input_ids)':
            Provenance.SINGLE,
        'inputs = tok(prompt, return_tensors="pt")\nm.generate(inputs.input_ids)': Provenance.SINGLE,
        'for prompt in prompts:\n    ids = tok(prompt, padding=True, return_tensors="pt").input_ids\n'
        '    m.generate(ids)': Provenance.SINGLE,
        'for batch in eval_dataloader:\n    m.generate(batch["input_ids"])': Provenance.LOADER,
        'for i, batch in enumerate(tqdm(loader)):\n    m.generate(batch["input_ids"])': Provenance.LOADER,
        'def f(ids):\n    m.generate(ids)': Provenance.UNKNOWN,
        'inputs = tok(texts, padding=pad_opt)\nm.generate(inputs.input_ids)': Provenance.UNKNOWN,
    }
    for code, expected in cases.items():
        assert _origin(code)[1].provenance is expected, code
    ctx, origin = _origin('enc = tokenizer(batch_texts, padding=True)\nids = enc.input_ids\nm.generate(ids)')
    assert ctx.code(origin.encoding) == "enc" and ctx.code(origin.tokenizer) == "tokenizer"


def test_step_hook_batch():
    ctx = ctx_for("""
        class M(LightningModule):
            def validation_step(self, batch, batch_idx):
                return self.model.generate(**batch)
            def helper(self, batch):
                return self.model.generate(**batch)
    """)
    calls = [c for c in ctx.nodes(cst.Call) if ctx.code(c.func).endswith("generate")]
    batches = ctx.get(Batches)
    assert batches.origin(calls[0].args[0].value).provenance is Provenance.LOADER
    assert batches.origin(calls[1].args[0].value).provenance is Provenance.UNKNOWN


def test_unsliced_root_and_derivation():
    ctx = ctx_for("""
        def step(model, src, tgt):
            tgt = tgt.to(device)
            emb = self.pos(self.embed(tgt) * scale)
            out = model(src, tgt)
            out2 = model(src, tgt[:-1])
            loss = crit(out, batch["labels"].cuda())
            out3 = model(src, emb)
    """)
    flow = ctx.get(Assignments)
    calls = [c for c in ctx.nodes(cst.Call) if ctx.code(c.func) == "model"]
    assert flow.unsliced_root(calls[0].args[1].value) == "tgt"
    assert flow.unsliced_root(calls[1].args[1].value) is None
    crit = next(c for c in ctx.nodes(cst.Call) if ctx.code(c.func) == "crit")
    assert flow.unsliced_root(crit.args[1].value) == 'batch["labels"]'
    emb_use = [n for n in ctx.nodes(cst.Name) if n.value == "emb"][-1]
    derived = {ctx.code(e) for e in flow.derivation(emb_use)}
    assert {"self.pos(self.embed(tgt) * scale)", "self.pos", "scale", "tgt"} <= derived


def test_parameters_and_local_rebinding_shadow_module_instances():
    for code in ("""
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained("m")
        def run(model, x):
            return model.generate(x)
    """, """
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained("m")
        def run(x):
            model, tok = load()
            return model.generate(x)
    """):
        assert UNKNOWN in _generate_receiver_kinds(code)
    assert _generate_receiver_kinds("""
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained("m")
        def run(x):
            return model.generate(x)
    """) == {"transformers.AutoModelForCausalLM"}


def test_batch_moved_to_device_keeps_its_provenance():
    ctx, origin = _origin(
        'for batch in val_loader:\n'
        '    batch = {k: v.to(device) for k, v in batch.items()}\n'
        '    m.generate(batch["input_ids"])')
    assert origin.provenance is Provenance.LOADER and ctx.code(origin.encoding) == "batch"
    assert _origin('for batch in val_loader:\n'
                   '    batch = {k: v for k, v in batch.items() if k != "labels"}\n'
                   '    m.generate(batch["input_ids"])')[1].provenance is Provenance.UNKNOWN


def test_mask_slots_come_from_the_forward_signatures():
    from mllint.analysis.signatures import attention_mask_parameters, key_padding_parameters

    assert key_padding_parameters("torch.nn.TransformerDecoder") == ("tgt_key_padding_mask", "memory_key_padding_mask")
    assert attention_mask_parameters("torch.nn.TransformerEncoder") == ("mask",)
    assert attention_mask_parameters("torch.nn.MultiheadAttention") == ("attn_mask",)
    assert key_padding_parameters("torch.nn.Linear") == attention_mask_parameters("torch.nn.Linear") == ()
