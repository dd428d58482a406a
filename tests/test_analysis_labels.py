"""Labels: label writes, copies, shifted pairs, padded tokenizations, mask values, collators."""

from __future__ import annotations

import textwrap

import libcst as cst

from mllint import Settings
from mllint.analysis.labels import IGNORE, PAD, Labels
from mllint.core.context import Context


def analysis(code: str) -> Labels:
    code = textwrap.dedent(code)
    ctx = Context(code, "t.py", cst.parse_module(code), Settings())
    return ctx.get(Labels)


def test_writes_in_every_spelling_and_preprocessing():
    labels = analysis("""
        def tokenize(example):
            enc = tokenizer(example["text"])
            enc["labels"] = enc["input_ids"].copy()
            return enc
        class Data:
            def __getitem__(self, i):
                return dict(input_ids=self.ids[i], labels=self.ids[i])
        rows = [{"input_ids": a, "labels": b} for a, b in pairs]
        ds = ds.map(tokenize)
    """)
    writes = labels.writes()
    code = labels.ctx.code
    assert [code(w.value) for w in writes] == ['enc["input_ids"].copy()', "self.ids[i]", "b"]
    assert [labels.preprocessing(w.node) is not None for w in writes] == [True, True, False]
    assert labels.is_map_root(labels.preprocessing(writes[0].node))
    assert not labels.is_map_root(labels.preprocessing(writes[1].node))


def test_copies_and_pad_masked_copies_of_input_ids():
    labels = analysis("""
        def a(ex):
            enc = tokenizer(ex["text"])
            enc["labels"] = list(enc["input_ids"])
            return enc
        def b(ex):
            enc = tokenizer(ex["q"])
            enc["labels"] = tokenizer(ex["a"])["input_ids"]
            return enc
        def c(ex):
            ids = tokenizer(ex["text"])["input_ids"]
            labels = ids.copy()
            labels[:3] = [-100] * 3
            return {"input_ids": ids, "labels": labels}
        def d(batch):
            out = tokenizer(batch["text"], padding="max_length")
            rows = []
            for seq in out["input_ids"]:
                rows.append([t if t != tokenizer.pad_token_id else -100 for t in seq])
            out["labels"] = rows
            return out
        def e(batch):
            out = tokenizer(batch["text"], padding="max_length")
            out["labels"] = [[-100 if t == tokenizer.pad_token_id else t for t in s] for s in out["input_ids"]]
            return out
    """)
    a, b, c, d, e = labels.writes()
    assert [labels.copies_input_ids(w) for w in (a, b, c, d, e)] == [True, False, False, False, False]
    assert [labels.pad_masked_copy(w) for w in (a, b, c, d, e)] == [False, False, False, True, True]


def test_shifted_pairs_through_local_names():
    labels = analysis("""
        def step(batch, data, i, n):
            x = batch["input_ids"]
            y = x[:, 1:].clone()
            w = data[i:i + n]
            z = data[i + 1:i + 1 + n]
            model(x[:, :-1], labels=y)
            model(w, labels=z)
            model(z, labels=w)
            model(x, labels=y)
    """)
    calls = [c for c in labels.ctx.nodes(cst.Call) if labels.ctx.code(c.func) == "model"]
    assert [labels.shifted_pair(c.args[0].value, c.args[1].value) for c in calls] == \
        ["x", "data", None, None]


def test_shifted_pair_slices_and_roll():
    labels = analysis("""
        import torch
        def f(ids):
            model(input_ids=ids[:, :-1], labels=ids[:, 1:])
            model(input_ids=ids, labels=torch.roll(ids, -1, dims=1))
            model(input_ids=ids[:, :-1], labels=ids[:, :-1])
            model(input_ids=ids, labels=ids)
    """)
    calls = [c for c in labels.ctx.nodes(cst.Call) if labels.ctx.code(c.func) == "model"]
    pairs = [(c.args[0].value, c.args[1].value) for c in calls]
    assert [labels.shifted_pair(i, l) for i, l in pairs] == ["ids", "ids", None, None]


def test_padded_calls():
    labels = analysis("""
        def one(row):
            enc = tokenizer(row["q"], padding="max_length")
            tgt = tokenizer(text_target=row["a"], padding=True)
            both = tokenizer(row["q"], text_target=row["a"], padding="max_length")
            return enc["input_ids"], tgt["input_ids"], both["labels"]
        def many(batch):
            tgt = tokenizer(text_target=batch["a"], padding=True)
            plain = tokenizer(batch["a"])
            return tgt.input_ids, plain["input_ids"]
        ds.map(one)
        ds.map(many, batched=True)
    """)
    ctx = labels.ctx
    returned = [e.value for r in ctx.nodes(cst.Return) for e in r.value.elements]
    found = [labels.padded_call(v) for v in returned]
    assert [f is not None for f in found] == [True, False, True, True, False]


def test_padded_call_stops_at_rows_modified_through_a_loop():
    labels = analysis("""
        def build(texts):
            ids = tokenizer(texts, padding="max_length", return_tensors="pt").input_ids
            whole = ids.clone()
            rows = ids.clone()
            paired = ids.clone()
            other = ids.clone()
            for row in rows:
                row[5:] = -100
            for i, row in enumerate(paired):
                row.masked_fill_(row == 0, -100)
            for text, row in zip(texts, other):
                text[0] = None
            return whole, rows, paired, other
        def keyed(texts):
            enc = tokenizer(texts, padding="max_length")
            kept = tokenizer(texts, padding="max_length")
            for a, b in zip(kept["input_ids"], enc["input_ids"]):
                b[3:] = [-100] * 5
            return enc["input_ids"], kept["input_ids"]
    """)
    ctx = labels.ctx
    returned = [e.value for r in ctx.nodes(cst.Return) for e in r.value.elements]
    assert [labels.padded_call(v) is not None for v in returned] == [True, False, False, True, False, True]


def test_value_kinds_and_mask_writes():
    labels = analysis("""
        import torch
        from torch.nn.utils.rnn import pad_sequence
        from transformers import DataCollatorForSeq2Seq, DataCollatorForLanguageModeling
        IGNORE_INDEX = -100
        PAD_IDX = 1
        labels[labels == tok.pad_token_id] = IGNORE_INDEX
        lm_labels = ids.masked_fill(mask, -1)
        tgt_labels = pad_sequence(seqs, padding_value=PAD_IDX)
        other = pad_sequence(seqs, padding_value=0)
        DataCollatorForSeq2Seq(tok, label_pad_token_id=tok.pad_token_id)
        DataCollatorForLanguageModeling(tok, mlm=False)
        x = vocab["<pad>"]
    """)
    got = [(w.kind, w.target) for w in labels.mask_writes()]
    assert got == [(IGNORE, "labels"), ("-1", "lm_labels"), (PAD, "tgt_labels"), (PAD, "labels"),
                   (IGNORE, "labels")]
    x = [n for n in labels.ctx.nodes(cst.Subscript) if labels.ctx.code(n) == 'vocab["<pad>"]'][0]
    assert labels.value_kind(x) == PAD


def test_pad_replacement_evidence():
    assert analysis("""
        labels = [[(t if t != tokenizer.pad_token_id else -100) for t in s] for s in ids]
    """).pad_replacement() is not None
    assert analysis("""
        criterion = nn.CrossEntropyLoss(ignore_index=tokenizer.pad_token_id)
    """).pad_replacement() is not None
    # The reverse replacement for decoding is not evidence.
    assert analysis("""
        preds = np.where(labels != -100, labels, tokenizer.pad_token_id)
        criterion = nn.CrossEntropyLoss(ignore_index=-100)
    """).pad_replacement() is None


def test_collator_datasets():
    labels = analysis("""
        from datasets import load_dataset
        from transformers import DataCollatorForLanguageModeling, Trainer
        from helpers import load_quotes
        def tok(batch):
            return tokenizer(batch["text"])
        def other(batch):
            return tokenizer(batch["q"])
        def load():
            return load_dataset("x")["train"].map(tok, batched=True)
        a = load().shuffle(seed=0)
        b = load_quotes().map(other)
        c = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        Trainer(train_dataset=a, eval_dataset=b, data_collator=c)
        Trainer(train_dataset=unknown, data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    """)
    first, second = labels.lm_collators()
    assert sorted(f.name.value for f in labels.collator_datasets(first)) == ["other", "tok"]
    assert labels.collator_datasets(second) is None
