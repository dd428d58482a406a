"""Vocab: token additions, embedding resizes, models and their checkpoints."""

from __future__ import annotations

import textwrap

import libcst as cst

from mllint import Settings
from mllint.analysis.vocab import Vocab, t5_family
from mllint.core.context import Context


def vocab_of(code: str):
    code = textwrap.dedent(code)
    ctx = Context(code, "t.py", cst.parse_module(code), Settings())
    return ctx, ctx.get(Vocab)


def additions(code: str):
    ctx, vocab = vocab_of(code)
    return [(a.method, a.literals, a.hidden, a.unclear, a.pad_only) for a in vocab.additions]


def test_literal_tokens_through_names_lists_and_added_token():
    assert additions("""
        from transformers import AddedToken
        NEW = ["<a>", AddedToken("<b>", lstrip=True)]
        def setup(tok):
            tok.add_tokens(NEW)
            tok.add_tokens("<c>")
    """) == [("add_tokens", ("<a>", "<b>"), False, False, False),
             ("add_tokens", ("<c>",), False, False, False)]


def test_special_tokens_dict_keys_and_own_tokens():
    assert additions("""
        tok.add_special_tokens({"pad_token": tok.eos_token})
        tok.add_special_tokens({"pad_token": "[PAD]"})
        special = {"additional_special_tokens": ["<x>"], "sep_token": tok.convert_ids_to_tokens(3)}
        tok.add_special_tokens(special)
    """) == [("add_special_tokens", (), False, False, True),
             ("add_special_tokens", ("[PAD]",), False, False, True),
             ("add_special_tokens", ("<x>",), False, False, False)]


def test_opaque_values_are_hidden_or_unclear():
    assert additions("""
        tok.add_tokens(words_from_file)
        tok.add_special_tokens({"pad_token": pad})
        tok.add_special_tokens({"additional_special_tokens": markers})
        tok.add_special_tokens(config.special_tokens)
    """) == [("add_tokens", (), True, False, False),
             ("add_special_tokens", (), False, True, True),
             ("add_special_tokens", (), True, False, False),
             ("add_special_tokens", (), False, True, False)]


def test_resizes_and_their_order():
    ctx, vocab = vocab_of("""
        from trl import setup_chat_format
        model.resize_token_embeddings(len(tok))
        tok.add_tokens(["<a>"])
        def later():
            tok.add_tokens(["<b>"])
        model, tok = setup_chat_format(model, tok)
    """)
    assert [ctx.code(c.func) for c in vocab.resizes] == ["model.resize_token_embeddings", "setup_chat_format"]
    first, second = vocab.additions
    assert vocab.resized_after(first)  # setup_chat_format runs later
    assert vocab.resized_after(second)  # a resize in another scope may run after it


def test_resize_before_the_addition_does_not_count():
    _, vocab = vocab_of("""
        model.resize_token_embeddings(len(tok))
        tok.add_tokens(["<a>"])
    """)
    assert not vocab.resized_after(vocab.additions[0])


def test_sizes_from_tokenizer_and_padding():
    _, vocab = vocab_of("""
        config = GPT2Config(vocab_size=len(tok))
    """)
    assert vocab.sizes_from_tokenizer()
    _, vocab = vocab_of("""
        config.vocab_size = 50257
        enc = tok(texts, padding=False)
    """)
    assert not vocab.sizes_from_tokenizer()
    assert not vocab.pads_with_tokenizer()
    _, vocab = vocab_of("""
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained("gpt2")
        enc = tok(texts, padding="max_length")
    """)
    assert vocab.pads_with_tokenizer()
    _, vocab = vocab_of("""
        from transformers import Trainer
        trainer = Trainer(model=model, processing_class=tok)
    """)
    assert vocab.pads_with_tokenizer()


def test_models_and_checkpoints():
    ctx, vocab = vocab_of("""
        from peft import get_peft_model
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
        NAME = "google/flan-t5-base"
        tok = AutoTokenizer.from_pretrained(NAME)
        base = AutoModelForSeq2SeqLM.from_pretrained(NAME).to("cuda")
        model = get_peft_model(base, cfg)
        other = AutoModelForSeq2SeqLM.from_pretrained(args.model)
    """)
    models = vocab.models()
    assert [m.target for m in models] == ["base", "model", "other"]
    model_name = ctx.module.body[-2].body[0].targets[0].target
    assert vocab.checkpoints(model_name) == {"google/flan-t5-base"}
    assert vocab.checkpoints(models[2].node.value, models[2].node) == {None}


def test_checkpoints_of_self_attributes():
    ctx, vocab = vocab_of("""
        from transformers import T5ForConditionalGeneration
        class M:
            def __init__(self):
                self.model = T5ForConditionalGeneration.from_pretrained("t5-small")
            def step(self, x):
                return self.model(x)
    """)
    call = [c for c in ctx.nodes(cst.Call) if ctx.code(c) == "self.model(x)"][0]
    assert vocab.checkpoints(call.func, call) == {"t5-small"}


def test_t5_family():
    assert t5_family({"transformers.T5ForConditionalGeneration"}, {None})
    assert t5_family({"transformers.MT5ForConditionalGeneration"}, {None})
    assert t5_family({"transformers.AutoModelForSeq2SeqLM"}, {"google/byt5-small"})
    assert t5_family({"transformers.AutoModelForSeq2SeqLM"}, {"facebook/bart-base"}) is False
    assert t5_family({"transformers.AutoModelForSeq2SeqLM"}, {None}) is None
    assert t5_family({"transformers.BartForConditionalGeneration"}, {"x"}) is False


def test_resizing_helpers_by_name():
    ctx, vocab = vocab_of("""
        smart_tokenizer_and_embedding_resize(special, tok, model)
        image = transforms.Resize(224)(image)
    """)
    assert [ctx.code(c.func) for c in vocab.resizes] == ["smart_tokenizer_and_embedding_resize"]
