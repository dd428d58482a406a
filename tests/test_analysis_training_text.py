"""TrainingText: training examples, what their texts are built from, and EOS evidence."""

from __future__ import annotations

import textwrap

import libcst as cst
from packaging.version import Version

from mllint import Settings
from mllint.analysis.training_text import TrainingText
from mllint.core.context import Context


def analysis(code: str, **settings) -> TrainingText:
    code = textwrap.dedent(code)
    ctx = Context(code, "t.py", cst.parse_module(code), Settings(**settings))
    return ctx.get(TrainingText)


def codes(text: TrainingText, nodes) -> list:
    return [text.ctx.code(n) for n in nodes]


def test_labels_copied_from_the_same_encoding():
    text = analysis("""
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained("m")
        def tokenize(prompt):
            result = tokenizer(prompt, truncation=True)
            result["labels"] = result["input_ids"].copy()
            return result
        def pair(example):
            enc = tokenizer(example["q"])
            target = tokenizer(example["a"])
            enc["labels"] = target["input_ids"]
            return enc
    """)
    [example] = text.examples()
    assert text.ctx.code(example.call) == "tokenizer(prompt, truncation=True)"
    assert text.ctx.code(example.text) == "prompt"
    assert example.description == '`result["labels"]` copies its `input_ids`'


def test_labels_copied_through_a_local_function_and_in_every_spelling():
    text = analysis("""
        import copy
        import torch
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained("m")
        def encode(text):
            return tok(text)
        def a(example):
            out = encode(example["x"])
            out["labels"] = list(out["input_ids"])
            return out
        def b(example):
            ids = tok.encode(example["y"])
            return {"input_ids": torch.tensor(ids), "labels": torch.tensor(ids).clone()}
        def c(example):
            enc = tok(example["z"], return_tensors="pt")
            input_ids = enc["input_ids"].flatten()
            labels = copy.deepcopy(input_ids)
            return input_ids, labels
        def d(batch):
            enc = tok(batch["w"])
            enc["labels"] = [ids[:] for ids in enc["input_ids"]]
            return enc
    """)
    assert codes(text, [e.call for e in text.examples()]) == [
        "tok(text)", 'tok.encode(example["y"])', 'tok(example["z"], return_tensors="pt")', 'tok(batch["w"])']


def test_an_alias_in_a_dict_needs_the_same_encoding_for_input_ids():
    text = analysis("""
        tok = AutoTokenizer.from_pretrained("m")
        def same(ex):
            enc = tok(ex["x"])
            return {"input_ids": enc["input_ids"], "labels": enc["input_ids"]}
        def other(ex):
            enc = tok(ex["x"])
            target = tok(ex["y"])
            return {"input_ids": enc["input_ids"], "labels": target["input_ids"]}
    """)
    assert [text.ctx.enclosing(e.call, cst.FunctionDef).name.value for e in text.examples()] == ["same"]


def test_the_causal_collator_labels_only_mapped_preprocessing():
    text = analysis("""
        from transformers import DataCollatorForLanguageModeling
        def prompt(row):
            return f"Q: {row['q']}"
        def helper(row):
            return tokenizer(prompt(row))
        data = data.map(lambda row: helper(row))
        probe = tokenizer("hello")
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    """)
    [example] = text.examples()
    assert text.ctx.code(example.call) == "tokenizer(prompt(row))"
    assert "DataCollatorForLanguageModeling(mlm=False)" in example.description


def test_no_examples_with_a_masked_lm_collator():
    text = analysis("""
        from transformers import DataCollatorForLanguageModeling
        data = data.map(lambda row: tokenizer(f"Q: {row['q']}"))
        collator = DataCollatorForLanguageModeling(tokenizer)
    """)
    assert text.examples() == []


def sources_of_first(text: TrainingText):
    return text.sources(text.examples()[0].text)


def test_sources_follow_parameters_to_call_sites_and_local_templates():
    text = analysis("""
        def generate_prompt(data_point):
            return f"### Instruction:\\n{data_point['instruction']}\\n### Response:\\n{data_point['output']}"
        def tokenize(prompt):
            result = tokenizer(prompt)
            result["labels"] = result["input_ids"].copy()
            return result
        def generate_and_tokenize_prompt(data_point):
            full_prompt = generate_prompt(data_point)
            return tokenize(full_prompt)
        data.map(generate_and_tokenize_prompt)
    """)
    sources = sources_of_first(text)
    assert len(sources.template) == 2
    assert codes(text, sources.data) == ["data_point['instruction']", "data_point['output']"]
    assert sources.built_without_eos


def test_sources_of_module_templates_format_and_appended_lists():
    text = analysis("""
        TEMPLATES = {"qa": "Question: {q}\\nAnswer: {a}"}
        def encode(batch):
            texts = []
            for q, a in zip(batch["q"], batch["a"]):
                texts.append(TEMPLATES["qa"].format(q=q, a=a).strip())
            enc = tokenizer(texts)
            enc["labels"] = enc["input_ids"].copy()
            return enc
    """)
    sources = sources_of_first(text)
    assert codes(text, sources.template) == ['"Question: {q}\\nAnswer: {a}"']
    assert codes(text, sources.data) == ["q", "a"]
    assert sources.built_without_eos


def test_eos_and_opaque_sources():
    eos = analysis("""
        def tok(ex):
            enc = tokenizer(f"Q: {ex['q']} A: {ex['a']}" + tokenizer.eos_token)
            enc["labels"] = enc["input_ids"].copy()
            return enc
    """)
    assert codes(eos, sources_of_first(eos).eos) == ["tokenizer.eos_token"]
    literal = analysis("""
        def tok(ex):
            enc = tokenizer(f"<s>[INST] {ex['q']} [/INST] {ex['a']} </s>")
            enc["labels"] = enc["input_ids"].copy()
            return enc
    """)
    assert len(sources_of_first(literal).eos) == 1
    opaque = analysis("""
        from utils import Prompter
        prompter = Prompter()
        def tok(ex):
            enc = tokenizer("### " + prompter.generate_prompt(ex) + self.suffix)
            enc["labels"] = enc["input_ids"].copy()
            return enc
    """)
    sources = sources_of_first(opaque)
    assert codes(opaque, sources.opaque) == ["prompter.generate_prompt(ex)", "self.suffix"]
    assert not sources.built_without_eos
    raw = analysis("""
        def tok(batch):
            enc = tokenizer(batch["text"])
            enc["labels"] = enc["input_ids"].copy()
            return enc
    """)
    assert not sources_of_first(raw).template and not sources_of_first(raw).built_without_eos


def test_eos_evidence_ignores_pad_and_generation_settings():
    text = analysis("""
        tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token_id = tokenizer.eos_token_id
        model.config.pad_token_id = tokenizer.eos_token_id
        tok2 = AutoTokenizer.from_pretrained("m", pad_token="</s>", add_eos_token=False)
        tokenizer.add_eos_token = False
        out = model.generate(**enc, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        assert tokenizer.pad_token_id != tokenizer.eos_token_id
    """)
    assert text.eos_evidence() is None


def test_eos_evidence():
    cases = {
        'text = prompt + tokenizer.eos_token': "`tokenizer.eos_token`",
        'result["input_ids"].append(tokenizer.eos_token_id)': "`tokenizer.eos_token_id`",
        'TEMPLATE = "{q} {a}<|im_end|>"': 'the EOS literal "{q} {a}<|im_end|>"',
        'tok = AutoTokenizer.from_pretrained("m", add_eos_token=True)': "`add_eos_token`",
        'tokenizer.add_eos_token = True': "`add_eos_token`",
        'def tokenize(prompt, add_eos_token=True): pass': "`add_eos_token`",
        'ids = tokenizer.apply_chat_template(messages)': "a chat template",
    }
    for line, description in cases.items():
        found = analysis(line).eos_evidence()
        assert found is not None and found[1] == description, line


def test_sft_trainer_is_eos_evidence_from_trl_016():
    code = """
        from trl import SFTTrainer
        trainer = SFTTrainer(model=model, train_dataset=ds)
    """
    assert analysis(code).eos_evidence()[1].startswith("trl's `SFTTrainer`")
    assert analysis(code, target_versions={"trl": Version("0.16.0")}).eos_evidence() is not None
    assert analysis(code, target_versions={"trl": Version("0.15.2")}).eos_evidence() is None


def test_packs():
    assert analysis("x = {k: sum(examples[k], []) for k in examples}").packs()
    assert analysis("enc = tokenizer(texts, return_overflowing_tokens=True)").packs()
    assert not analysis("enc = tokenizer(texts)").packs()


def test_recursive_helpers_are_followed_once():
    text = analysis("""
        def encode(t, n):
            if n > 2:
                return encode(t, n - 1)
            if n > 1:
                return encode(t + " ", n - 1)
            if n > 0:
                return encode(t, 0)
            return tokenizer(t)
        def prep(example):
            enc = encode(f"Q: {example['q']}", 3)
            enc["labels"] = enc["input_ids"].copy()
            return enc
    """)
    [example] = text.examples()
    assert text.ctx.code(example.call) == "tokenizer(t)"


def endings(code: str) -> set:
    text = analysis(code)
    return sources_of_first(text).endings


def test_what_a_text_ends_with():
    body = """
        def prep(ex):
            enc = tokenizer({})
            enc["labels"] = enc["input_ids"].copy()
            return enc
    """

    def ends(text_expr: str) -> set:
        return endings(body.format(text_expr))
    assert ends('f"Q: {ex[\'q\']}\\nA: {ex[\'a\']}\\n"') == {"data"}
    assert ends('f"Q: {ex[\'q\']}\\nA: {ex[\'a\']}\\n### End"') == {"template"}
    assert ends('"Q: " + ex["q"] + "\\n" + "A: " + ex["a"] + "\\n"') == {"data"}
    assert ends('"Q: {q} A: {a}".format(q=ex["q"], a=ex["a"]).strip()') == {"data"}
    assert ends('"Q: {q} A: {a} [END]".format(**ex)') == {"template"}
    assert ends('"Q: %s A: %(a)s" % (ex["q"], ex)') == {"data"}
    assert ends('"\\n".join([ex["q"], "Answer:", ex["a"]])') == {"data"}
    assert ends('"\\n".join([ex["q"], ex["a"], "[END]"])') == {"template"}
    assert ends('"\\n".join(parts)') == {"opaque"}
    assert ends('ex["q"] if ex["short"] else f"{ex[\'q\']} (long)"') == {"data", "template"}
