"""Generation-settings analysis (mllint.analysis.generation)."""

from __future__ import annotations

import textwrap

import libcst as cst

from mllint import Settings
from mllint.analysis.generation import Generation, greedy_model, number
from mllint.core.context import Context


def ctx_for(code: str) -> Context:
    code = textwrap.dedent(code)
    return Context(code, "t.py", cst.parse_module(code), Settings())


def test_call_layers_read_keywords_dict_splats_and_skip_encodings():
    ctx = ctx_for("""
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained("gpt2")
        gen_kwargs = {"max_length": 64, "num_beams": 2}
        enc = tokenizer(text, return_tensors="pt")
        model.generate(**enc, temperature=0.5, **gen_kwargs)
        model.generate(ids, **other)
        other_model.generate(ids, max_length=3)
        """)
    first, second = ctx.get(Generation).calls  # other_model is not known to be a HF model
    assert first.kwargs.complete and set(first.kwargs.settings) == {"temperature", "max_length", "num_beams"}
    assert first.config is None and not first.may_set("max_new_tokens")
    assert not second.kwargs.complete and second.may_set("max_new_tokens")


def test_mutated_dict_is_incomplete():
    ctx = ctx_for("""
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained("gpt2")
        gen_kwargs = dict(max_length=64)
        gen_kwargs["max_new_tokens"] = 10
        model.generate(ids, **gen_kwargs)
        """)
    (call,) = ctx.get(Generation).calls
    assert call.may_set("max_new_tokens")


def test_config_layer_follows_module_names_and_later_writes():
    ctx = ctx_for("""
        from transformers import AutoModelForCausalLM, GenerationConfig
        model = AutoModelForCausalLM.from_pretrained("gpt2")
        cfg = GenerationConfig(max_length=100)
        cfg.do_sample = True
        loaded = GenerationConfig.from_pretrained("gpt2")
        def run(ids):
            a = model.generate(ids, generation_config=cfg)
            b = model.generate(ids, generation_config=loaded)
        """)
    first, second = ctx.get(Generation).calls
    assert first.config.complete and first.config.constructor is not None
    assert set(first.config.settings) == {"max_length", "do_sample"}
    assert first.setting("max_length") is not None and first.kwargs.get("max_length") is None
    assert not second.config.complete and second.may_set("do_sample")


def test_model_layer_replacement_and_update():
    ctx = ctx_for("""
        from transformers import AutoModelForCausalLM, GenerationConfig
        model = AutoModelForCausalLM.from_pretrained(path)
        model.generation_config = GenerationConfig(temperature=0.7)
        model.generation_config.max_length = 50
        other = AutoModelForCausalLM.from_pretrained(path)
        other.generation_config.update(**settings)
        model.generate(ids)
        other.generate(ids)
        """)
    generation = ctx.get(Generation)
    first, second = generation.calls
    layer = generation.model_layer(first.receiver)
    assert layer.replaced_by is not None and set(layer.settings) == {"temperature", "max_length"}
    assert greedy_model(generation, first.receiver, first.call)[1] is layer.replaced_by
    assert not generation.model_layer(second.receiver).complete
    assert greedy_model(generation, second.receiver, second.call) is None


def test_checkpoint_through_constants_and_peft_wrappers():
    ctx = ctx_for("""
        from peft import PeftModel, get_peft_model
        from transformers import AutoModelForCausalLM
        NAME = "gpt2"
        class Lit:
            def __init__(self, cfg):
                self.model = get_peft_model(AutoModelForCausalLM.from_pretrained(NAME), cfg)
            def step(self, ids):
                return self.model.generate(ids, top_k=10)
        chat = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-chat-hf")
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(NAME), "out/adapter")
        chat.generate(ids)
        tuned.generate(ids)
        """)
    generation = ctx.get(Generation)
    lit, chat, tuned = generation.calls
    assert generation.checkpoint(lit.receiver, lit.call) == "gpt2"
    assert generation.checkpoint(tuned.receiver, tuned.call) == "gpt2"
    assert generation.checkpoint(chat.receiver, chat.call) == "meta-llama/Llama-2-7b-chat-hf"
    assert generation.samples_by_default("gpt2") is False
    assert generation.samples_by_default("facebook/opt-1.3b") is False
    assert generation.samples_by_default("meta-llama/Llama-2-7b-chat-hf") is None
    assert "gpt2" in greedy_model(generation, lit.receiver, lit.call)[0]
    assert greedy_model(generation, chat.receiver, chat.call) is None


def test_number_reads_literals_through_a_name():
    ctx = ctx_for("""
        t = -0.5
        f(t, 3, x)
        """)
    (call,) = [c for c in ctx.nodes(cst.Call)]
    values = [number(ctx, a.value) for a in call.args]
    assert values == [-0.5, 3.0, None]
