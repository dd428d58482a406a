from __future__ import annotations

from typing import Iterator, Optional

import libcst as cst

from mllint.analysis.hf import HfFacts
from mllint.analysis.labels import Labels
from mllint.analysis.signatures import TOKENIZER_CALL, bind
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Fix, Severity
from mllint.core.rule import Invalid, Rule, Valid


class LabelsKeepPadIds(Rule):
    """## What it does
    Checks for labels taken from a tokenizer call that pads (`padding="max_length"`, or
    `padding=True`/`"longest"` over a batch of texts) whose pad ids are never replaced by -100:
    `enc["labels"] = targets["input_ids"]`, `{"labels": enc.input_ids}`, a copy of the padded
    `input_ids`, or `tokenizer(inputs, text_target=targets, padding="max_length")` in dataset
    preprocessing.

    The rule stays silent when the module replaces pad ids (any statement comparing with a pad
    id or an attention mask that also writes -100, such as
    `[(t if t != tokenizer.pad_token_id else -100) for t in ids]` or
    `labels[labels == tokenizer.pad_token_id] = -100`), when a loss is built with an
    `ignore_index` other than -100 (it then ignores the pad id itself), when the label rows are
    changed in place through a loop (`for row in labels: row[n:] = -100`, also through
    `zip`/`enumerate`), and when `DataCollatorForLanguageModeling(mlm=False)` rebuilds the labels.

    ## Why is this bad?
    Hugging Face models compute their loss with `ignore_index=-100` only: `ForCausalLMLoss` and
    `fixed_cross_entropy` in `loss/loss_utils.py` (4.46, 4.57.6, 5.23.0), and
    `CrossEntropyLoss(ignore_index=-100)` in `T5ForConditionalGeneration.forward`
    (`models/t5/modeling_t5.py`, 4.30 and 5.23.0); BART's `CrossEntropyLoss()` has torch's default
    -100. Pad ids left in the labels are real targets: the model spends most of its loss learning
    to emit padding after the answer, and seq2seq models such as T5 end up generating empty or
    all-pad outputs (transformers#6238, #7896, #9827). `DataCollatorForSeq2Seq` does not help
    here: it pads labels with `label_pad_token_id` (-100) only up to the longest example, by
    position (`data/data_collator.py`, `DataCollatorForSeq2Seq.__call__`), so labels that arrive
    already padded keep their pad ids.

    ## Example
    ```python
    def preprocess(batch):
        inputs = tokenizer(batch["document"], max_length=512, padding="max_length", truncation=True)
        targets = tokenizer(text_target=batch["summary"], max_length=128, padding="max_length", truncation=True)
        inputs["labels"] = targets["input_ids"]
        return inputs
    ```

    ## Use instead
    ```python
    def preprocess(batch):
        inputs = tokenizer(batch["document"], max_length=512, padding="max_length", truncation=True)
        targets = tokenizer(text_target=batch["summary"], max_length=128, padding="max_length", truncation=True)
        inputs["labels"] = [[(t if t != tokenizer.pad_token_id else -100) for t in seq] for seq in targets["input_ids"]]
        return inputs
    ```
    or tokenize the targets without padding and let `DataCollatorForSeq2Seq` pad them with -100.

    ## Fix safety
    The fix is unsafe because it changes what the model is trained on (on purpose). It rewrites
    `X["input_ids"]` stored as labels into a comprehension that replaces the tokenizer's pad id
    by -100, for lists (one text or a batch of texts, no `return_tensors`). It is not offered
    when the pad token is set to the EOS token: the comprehension would mask every EOS label too
    (see MLL101).

    ## References
    - transformers `loss/loss_utils.py`, `ForCausalLMLoss`, `fixed_cross_entropy`
    - transformers `models/t5/modeling_t5.py`, `T5ForConditionalGeneration.forward`
    - transformers `data/data_collator.py`, `DataCollatorForSeq2Seq.__call__`
    - https://github.com/huggingface/transformers/issues/6238
    """

    code = "MLL104"
    name = "labels-keep-pad-ids"
    summary = "labels from a padded tokenization keep their pad ids instead of -100"
    severity = Severity.WARNING
    tags = ("correctness", "transformers")
    triggers = (("padding",), ("labels", "text_target"))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (
        ("keyword:padding",),
        ("string:labels", "keyword:text_target"),
    )
    premise = {"transformers": ">=4.0"}
    VALID = (
        # Pads replaced by -100, the run_summarization way.
        Valid("""
            def preprocess(batch):
                inputs = tokenizer(batch["document"], max_length=512, padding="max_length", truncation=True)
                labels = tokenizer(text_target=batch["summary"], max_length=64, padding="max_length", truncation=True)
                labels["input_ids"] = [[(l if l != tokenizer.pad_token_id else -100) for l in label] for label in labels["input_ids"]]
                inputs["labels"] = labels["input_ids"]
                return inputs
            ds = ds.map(preprocess, batched=True)
            """),
        # Targets not padded; DataCollatorForSeq2Seq pads them with -100.
        Valid("""
            from transformers import DataCollatorForSeq2Seq
            def preprocess(batch):
                inputs = tokenizer(batch["document"], max_length=512, truncation=True)
                inputs["labels"] = tokenizer(text_target=batch["summary"], max_length=64, truncation=True)["input_ids"]
                return inputs
            ds = ds.map(preprocess, batched=True)
            collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
            """),
        # The loss ignores the pad id itself.
        Valid("""
            import torch.nn as nn
            class Data:
                def __getitem__(self, i):
                    enc = self.tok(self.src[i], max_length=64, padding="max_length", return_tensors="pt")
                    tgt = self.tok(self.tgt[i], max_length=64, padding="max_length", return_tensors="pt")
                    return {"input_ids": enc.input_ids[0], "labels": tgt.input_ids[0]}
            criterion = nn.CrossEntropyLoss(ignore_index=tokenizer.pad_token_id)
            """),
        # Masked in the training step by position.
        Valid("""
            class T5Module(LightningModule):
                def training_step(self, batch, batch_idx):
                    labels = batch["labels"]
                    labels[labels[:, :] == self.tokenizer.pad_token_id] = -100
                    return self.model(input_ids=batch["input_ids"], labels=labels).loss
            def encode(row):
                enc = tokenizer(row["q"], padding="max_length", max_length=32)
                enc["labels"] = tokenizer(row["a"], padding="max_length", max_length=32)["input_ids"]
                return enc
            ds = ds.map(encode)
            """),
        # Each row of the cloned ids is masked through the loop variable: everything after the
        # answer, padding included, becomes -100 (rows of a tensor are views).
        Valid("""
            def build(dialogs, tok):
                ids = tok(dialogs, padding="max_length", max_length=256, return_tensors="pt").input_ids
                labels = ids.clone()
                for text, row in zip(dialogs, labels):
                    end = len(tok(text).input_ids)
                    row[end:] = -100
                return {"input_ids": ids, "labels": labels}
            """),
        # Batched map: each label row past its first EOS is overwritten with -100 in place,
        # through the rows of the encoding's own "input_ids" list.
        Valid("""
            import copy
            def prepare(batch):
                enc = tokenizer(batch["prompt"], max_length=128, padding="max_length", truncation=True)
                tgt = tokenizer(batch["answer"], max_length=128, padding="max_length", truncation=True)
                for row in tgt["input_ids"]:
                    stop = row.index(tokenizer.eos_token_id) + 1
                    row[stop:] = [-100] * (len(row) - stop)
                enc["labels"] = copy.deepcopy(tgt["input_ids"])
                return enc
            data = data.map(prepare, batched=True)
            """),
        # padding=True on one text pads nothing.
        Valid("""
            def encode(row):
                enc = tokenizer(row["question"], truncation=True)
                enc["labels"] = tokenizer(row["answer"], padding=True)["input_ids"]
                return enc
            ds = ds.map(encode)
            """),
    )
    INVALID = (
        Invalid(
            """
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("t5-small")
            def preprocess(batch):
                inputs = tokenizer(batch["document"], max_length=512, padding="max_length", truncation=True)
                targets = tokenizer(text_target=batch["summary"], max_length=128, padding="max_length", truncation=True)
                inputs["labels"] = targets["input_ids"]
                return inputs
            ds = ds.map(preprocess, batched=True)
            """,
            line=6,
            message='`padding="max_length"`',
            fix="""
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("t5-small")
            def preprocess(batch):
                inputs = tokenizer(batch["document"], max_length=512, padding="max_length", truncation=True)
                targets = tokenizer(text_target=batch["summary"], max_length=128, padding="max_length", truncation=True)
                inputs["labels"] = [[(t if t != tokenizer.pad_token_id else -100) for t in seq] for seq in targets["input_ids"]]
                return inputs
            ds = ds.map(preprocess, batched=True)
            """,
            applicability=Applicability.UNSAFE,
        ),
        # text_target in the same call: the labels come back already padded.
        Invalid(
            """
            def preprocess(examples):
                return tokenizer(examples["en"], text_target=examples["de"], max_length=128,
                                 padding="max_length", truncation=True)
            train = raw["train"].map(preprocess, batched=True)
            """,
            line=2,
            message="text_target",
        ),
        # A torch Dataset for a T5 fine-tune, tensors squeezed.
        Invalid(
            """
            from torch.utils.data import Dataset
            class QA(Dataset):
                def __getitem__(self, i):
                    source = self.tokenizer(self.questions[i], max_length=256, padding="max_length",
                                            truncation=True, return_tensors="pt")
                    target = self.tokenizer(self.answers[i], max_length=64, padding="max_length",
                                            truncation=True, return_tensors="pt")
                    return {"input_ids": source["input_ids"].squeeze(),
                            "attention_mask": source["attention_mask"].squeeze(),
                            "labels": target["input_ids"].squeeze()}
            """,
            line=10,
        ),
        # Causal LM: the padded input_ids copied into labels, default collator.
        Invalid(
            """
            from transformers import default_data_collator, Trainer
            def tokenize(example):
                result = tokenizer(example["text"], max_length=512, padding="max_length", truncation=True)
                result["labels"] = result["input_ids"].copy()
                return result
            train = raw.map(tokenize)
            Trainer(model=model, train_dataset=train, data_collator=default_data_collator).train()
            """,
            line=4,
            fix="""
            from transformers import default_data_collator, Trainer
            def tokenize(example):
                result = tokenizer(example["text"], max_length=512, padding="max_length", truncation=True)
                result["labels"] = [(t if t != tokenizer.pad_token_id else -100) for t in result["input_ids"]]
                return result
            train = raw.map(tokenize)
            Trainer(model=model, train_dataset=train, data_collator=default_data_collator).train()
            """,
            applicability=Applicability.UNSAFE,
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        labels = ctx.get(Labels)
        if labels.lm_collators() or labels.pad_replacement() is not None:
            return
        reported = set()
        for write in labels.writes():
            call = labels.padded_call(write.value)
            if call is None or call in reported:
                continue
            reported.add(call)
            yield ctx.report(
                write.node,
                f"labels are the ids of `{_short(ctx, call)}`, padded with {_padding(ctx, call)}, and their "
                f"pad ids are never replaced by -100: the loss (ignore_index=-100) trains the model to "
                f"emit padding",
                fix=self._fix(ctx, labels, write, call),
                help="Replace the pad ids with -100 (`[(t if t != tokenizer.pad_token_id else -100) for t "
                     "in ids]`), or tokenize the targets without padding and use `DataCollatorForSeq2Seq`",
            )
        for call in ctx.nodes(cst.Call):
            binding = bind(call, TOKENIZER_CALL)
            if call in reported or not (binding.passed("text") and binding.passed("text_target")):
                continue
            if labels.preprocessing(call) is None or labels.batches.tokenizer_call(call) is None \
                    or not labels.pads(call, "labels"):
                continue
            yield ctx.report(
                call,
                f"`text_target` is tokenized with {_padding(ctx, call)}, so the returned `labels` hold pad "
                f"ids, which are never replaced by -100: the loss (ignore_index=-100) trains the model to "
                f"emit padding",
                help="Replace the pad ids in `labels` with -100, or drop `padding=` and use "
                     "`DataCollatorForSeq2Seq`",
            )

    def _fix(self, ctx: Context, labels: Labels, write, call: cst.Call) -> Optional[Fix]:
        """``X["input_ids"]`` (or a copy) as labels -> the same ids with pad ids replaced."""
        if not isinstance(write.node, (cst.Assign, cst.DictElement)) or bind(call, TOKENIZER_CALL).passed("return_tensors"):
            return None
        value = _strip_copy(write.value)
        if not (isinstance(value, cst.Subscript) and ctx.code(value).endswith('["input_ids"]')):
            return None
        tokenizer = labels.batches.tokenizer_call(call)
        if tokenizer is None or ctx.get(HfFacts).eos_pad_assignments():
            return None
        pad = f"{ctx.code(tokenizer[0])}.pad_token_id"
        binding = bind(call, TOKENIZER_CALL)
        texts = binding.value("text_target") or binding.value("text")
        several = labels.several_texts(call, texts) if texts is not None else None
        ids = ctx.code(value)
        if several is True:
            new = f"[[(t if t != {pad} else -100) for t in seq] for seq in {ids}]"
        elif several is False:
            new = f"[(t if t != {pad} else -100) for t in {ids}]"
        else:
            return None
        return ctx.fix("Replace the pad ids in the labels with -100", Applicability.UNSAFE,
                       ctx.replace(write.value, new))


def _strip_copy(value: cst.BaseExpression) -> cst.BaseExpression:
    if isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute) \
            and value.func.attr.value in ("copy", "clone") and not value.args:
        return value.func.value
    return value


def _short(ctx: Context, call: cst.Call) -> str:
    code = ctx.code(call.func) + "(...)"
    return code


def _padding(ctx: Context, call: cst.Call) -> str:
    value = bind(call, TOKENIZER_CALL).value("padding")
    return f"`padding={ctx.code(value)}`" if value is not None else "padding"
