from __future__ import annotations

from typing import Iterator, List

import libcst as cst

from mllint.analysis.labels import IGNORE, LabelWrite, Labels
from mllint.core.context import Context
from mllint.core.diagnostic import Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid


class CollatorOverwritesLabels(Rule):
    """## What it does
    Checks for dataset preprocessing that builds its own `labels` (a prompt masked with -100,
    the response's token ids, any target other than a copy of `input_ids`) in a module that
    collates the examples with `DataCollatorForLanguageModeling(mlm=False)`.

    Preprocessing is a function given to `dataset.map(...)` (and the local functions it calls)
    or a dataset's `__getitem__`; the labels are `enc["labels"] = ...`, `{"labels": ...}` or
    `dict(labels=...)` there. When the collator is passed to a `Trainer` or `DataLoader`
    whose datasets can all be traced to their `map` calls, only those datasets count.

    ## Why is this bad?
    With `mlm=False`, `DataCollatorForLanguageModeling.torch_call` pads the examples, then
    sets `labels = batch["input_ids"].clone()`, masks every position equal to the pad id with
    -100 and assigns `batch["labels"] = labels` unconditionally (transformers
    `data/data_collator.py`, the same in 4.30, 4.46, 4.57.6 and 5.23.0; the numpy path does the
    same). Labels the example already carries are padded along and then thrown away. The model
    is trained on the whole sequence: prompt masking is lost (the model learns to generate the
    prompt), and labels that were a different sequence (the response of a question/answer
    pair) are replaced by the input itself, so the model learns to copy its input. Nothing
    warns; the loss goes down as usual.

    Labels that are a plain copy of `input_ids` are not reported (the collator rebuilds the
    same labels), nor are masked-LM collators (`mlm=True`, the default), which build labels
    from their own masking.

    ## Example
    ```python
    def tokenize(example):
        prompt = tokenizer(example["prompt"])["input_ids"]
        answer = tokenizer(example["answer"] + tokenizer.eos_token)["input_ids"]
        return {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}

    train = dataset.map(tokenize)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    ```

    ## Use instead
    ```python
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    ```
    `DataCollatorForSeq2Seq` pads the labels the examples carry with -100 and keeps them.

    ## Fix safety
    There is no fix: `DataCollatorForSeq2Seq` keeps the labels only when every example carries
    `labels`, and whether the pad token must be set first depends on the tokenizer. The help
    shows the replacement.

    ## References
    - transformers `data/data_collator.py`, `DataCollatorForLanguageModeling.torch_call`
    - transformers `data/data_collator.py`, `DataCollatorForSeq2Seq.__call__`
    - https://github.com/huggingface/transformers/issues/26357
    """

    code = "MLL102"
    name = "collator-overwrites-labels"
    summary = "labels built in preprocessing are replaced by DataCollatorForLanguageModeling(mlm=False)"
    severity = Severity.ERROR
    tags = ("correctness", "transformers")
    triggers = (("DataCollatorForLanguageModeling",), ("labels",))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (
        ("import:transformers & name:DataCollatorForLanguageModeling",),
        ("name:False",),
        ("string:labels", "keyword:labels"),
    )
    premise = {"transformers": ">=4.0"}
    VALID = (
        # Labels are a copy of input_ids: the collator rebuilds the same thing.
        Valid("""
            from transformers import DataCollatorForLanguageModeling
            def tokenize(example):
                result = tokenizer(example["text"], truncation=True)
                result["labels"] = result["input_ids"].copy()
                return result
            train = raw.map(tokenize)
            collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
            """),
        # A collator that keeps the labels.
        Valid("""
            from transformers import DataCollatorForSeq2Seq, default_data_collator
            def tokenize(example):
                prompt = tokenizer(example["prompt"])["input_ids"]
                answer = tokenizer(example["answer"])["input_ids"]
                return {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}
            train = raw.map(tokenize)
            collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
            """),
        # Masked LM (mlm defaults to True).
        Valid("""
            from transformers import DataCollatorForLanguageModeling
            def tokenize(example):
                enc = tokenizer(example["text"])
                enc["labels"] = [-100] * len(enc["input_ids"])
                return enc
            train = raw.map(tokenize)
            collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
            """),
        # The labelled dataset is collated by another collator; the LM collator only sees raw text.
        Valid("""
            from datasets import load_dataset
            from transformers import DataCollatorForLanguageModeling, DataCollatorForSeq2Seq, Trainer
            def with_labels(example):
                enc = tokenizer(example["q"])
                enc["labels"] = tokenizer(example["a"])["input_ids"]
                return enc
            def plain(example):
                return tokenizer(example["text"])
            sft = load_dataset("json", data_files="sft.json")["train"].map(with_labels)
            corpus = load_dataset("text", data_files="corpus.txt")["train"].map(plain, batched=True)
            lm_collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
            Trainer(model=model, train_dataset=corpus, data_collator=lm_collator).train()
            Trainer(model=model, train_dataset=sft, data_collator=DataCollatorForSeq2Seq(tokenizer)).train()
            """),
        # Labels written after collation (in the training loop) are not overwritten.
        Valid("""
            from transformers import DataCollatorForLanguageModeling
            collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
            for batch in loader:
                batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
                model(**batch).loss.backward()
            """),
    )
    INVALID = (
        Invalid(
            """
            from transformers import DataCollatorForLanguageModeling, Trainer
            def tokenize(example):
                prompt = tokenizer(example["prompt"])["input_ids"]
                answer = tokenizer(example["answer"] + tokenizer.eos_token)["input_ids"]
                return {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}
            train = raw.map(tokenize, remove_columns=raw.column_names)
            collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
            Trainer(model=model, train_dataset=train, data_collator=collator).train()
            """,
            line=7,
            message="masked with -100",
        ),
        # The response ids as labels (peft's LoRA-FA example shape), collator inline.
        Invalid(
            """
            import transformers
            def preprocess(examples):
                model_inputs = tokenizer(examples["query"], max_length=512, truncation=True)
                targets = tokenizer(examples["response"], max_length=512, truncation=True)
                model_inputs["labels"] = targets["input_ids"]
                return model_inputs
            ds = ds.map(preprocess, batched=True)
            trainer = transformers.Trainer(
                model=model, train_dataset=ds["train"],
                data_collator=transformers.DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False),
            )
            """,
            line=10,
            message="`preprocess` at line 5",
        ),
        # A torch Dataset that masks the prompt in __getitem__.
        Invalid(
            """
            from torch.utils.data import Dataset
            from transformers import DataCollatorForLanguageModeling
            class SFTData(Dataset):
                def __getitem__(self, i):
                    ids = self.tok(self.rows[i]["text"])["input_ids"]
                    labels = list(ids)
                    labels[: self.prompt_lens[i]] = [-100] * self.prompt_lens[i]
                    return dict(input_ids=ids, labels=labels)
            collator = DataCollatorForLanguageModeling(tok, False)
            """,
            line=9,
            message="`__getitem__` at line 8 (masked with -100)",
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        labels = ctx.get(Labels)
        collators = labels.lm_collators()
        if not collators:
            return
        writes: List[LabelWrite] = [w for w in labels.writes() if labels.preprocessing(w.node) is not None
                                    and not labels.copies_input_ids(w) and not labels.pad_masked_copy(w)]
        for collator in collators:
            used_with = labels.collator_datasets(collator)
            relevant = [w for w in writes if used_with is None or labels.preprocessing(w.node) in used_with
                        or not labels.is_map_root(labels.preprocessing(w.node))]
            if not relevant:
                continue
            write = relevant[0]
            function = labels.preprocessing(write.node)
            name = function.name.value if isinstance(function, cst.FunctionDef) else "a lambda"
            row = ctx.locator.location(ctx.span(write.node)[0]).row
            masked = any(m.kind == IGNORE and _inside(ctx, m.node, function) for m in labels.mask_writes()) \
                or "-100" in ctx.code(write.value)
            what = "masked with -100" if masked else "not a copy of `input_ids`"
            yield ctx.report(
                collator,
                f"`DataCollatorForLanguageModeling(mlm=False)` replaces every batch's `labels` with a copy "
                f"of `input_ids` (pad ids -> -100), so the labels built in `{name}` at line {row} ({what}) "
                f"never reach the loss",
                help=("Use `DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)`, "
                      "which pads the labels the examples carry and keeps them"),
            )


def _inside(ctx: Context, node: cst.CSTNode, container: cst.CSTNode) -> bool:
    return ctx.order(container) <= ctx.order(node) <= ctx.end_order(container)
