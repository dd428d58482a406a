from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Set

import libcst as cst

from mllint.analysis.dataflow import Assignments
from mllint.analysis.instances import Instances, constructor_of
from mllint.analysis.labels import IGNORE, PAD, Labels, MaskWrite, labels_key
from mllint.analysis.signatures import Signature, bind
from mllint.core.context import Context
from mllint.core.diagnostic import Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid

# torch 2.13.0 nn/modules/loss.py: ``CrossEntropyLoss.__init__`` (L1385-1393) and
# ``NLLLoss.__init__`` (L245-251): ``weight, size_average, ignore_index=-100, reduce, reduction, ...``.
_LOSS_CLASSES = {"torch.nn.CrossEntropyLoss": Signature(("weight", "size_average", "ignore_index", "reduce",
                                                         "reduction", "label_smoothing")),
                 "torch.nn.NLLLoss": Signature(("weight", "size_average", "ignore_index", "reduce", "reduction"))}
# nn/functional.py: ``cross_entropy`` (L3472-3481) and ``nll_loss`` (L3174-3182).
_LOSS_FUNCTIONS = {"torch.nn.functional.cross_entropy": Signature((
                       "input", "target", "weight", "size_average", "ignore_index", "reduce", "reduction",
                       "label_smoothing")),
                   "torch.nn.functional.nll_loss": Signature((
                       "input", "target", "weight", "size_average", "ignore_index", "reduce", "reduction"))}
_FORWARD = Signature(("input", "target"))


@dataclass(frozen=True)
class _Loss:
    node: cst.Call  # the constructor (or the functional call)
    ignore: Optional[cst.BaseExpression]  # the ignore_index argument, None for the default
    target: cst.BaseExpression  # what the loss is computed against


class IgnoreIndexMismatch(Rule):
    """## What it does
    Checks for a cross-entropy or NLL loss whose `ignore_index` differs from the value the
    module masks or pads its labels with:

    - labels masked with -100 (`labels[mask] = -100`, `[-100] * len(prompt) + ids`,
      `masked_fill(..., -100)`, `DataCollatorForSeq2Seq`'s label padding) while the loss is
      `nn.CrossEntropyLoss(ignore_index=pad_id)` or `F.cross_entropy(..., ignore_index=-1)`;
    - labels padded with the pad id (`pad_sequence(labels, padding_value=pad_id)`,
      `[pad_id] * n`) or masked with another value (-1) while the loss keeps the default
      `ignore_index=-100`.

    A loss is linked to labels through its target: the labels written and the loss target
    must be the same variable or the same `"labels"` entry. Values the rule cannot read (a
    parameter, a config field) keep it silent, and so do a pad id compared with a literal other
    than -100 (the pad id may be that number).

    ## Why is this bad?
    `nn.CrossEntropyLoss`, `nn.NLLLoss`, `F.cross_entropy` and `F.nll_loss` skip only the
    targets equal to `ignore_index`, which defaults to -100 (torch `nn/modules/loss.py`,
    `CrossEntropyLoss.__init__` and `NLLLoss.__init__`; `nn/functional.py`, `cross_entropy`,
    `nll_loss`; torch 2.13.0). Labels padded with the pad id under the default are trained on:
    the model learns to predict padding. Labels holding -100 or -1 under an `ignore_index` that
    is the pad id are targets out of the class range: the loss fails with "Target -100 is out of
    bounds" (a device-side assert on CUDA), often only at the first batch that has masking.

    ## Example
    ```python
    labels = pad_sequence(targets, batch_first=True, padding_value=tokenizer.pad_token_id)
    criterion = nn.CrossEntropyLoss()
    loss = criterion(logits.view(-1, vocab), labels.view(-1))
    ```

    ## Use instead
    ```python
    labels = pad_sequence(targets, batch_first=True, padding_value=tokenizer.pad_token_id)
    criterion = nn.CrossEntropyLoss(ignore_index=tokenizer.pad_token_id)
    loss = criterion(logits.view(-1, vocab), labels.view(-1))
    ```

    ## Fix safety
    There is no fix: whether the labels or the loss should change depends on the rest of the
    pipeline (a Hugging Face model's own loss only ignores -100).

    ## References
    - torch `nn/modules/loss.py`, `CrossEntropyLoss.__init__`, `NLLLoss.__init__`
    - torch `nn/functional.py`, `cross_entropy`, `nll_loss`
    - https://pytorch.org/docs/stable/generated/torch.nn.CrossEntropyLoss.html
    """

    code = "MLL106"
    name = "ignore-index-mismatch"
    summary = "loss ignore_index differs from the value labels are masked or padded with"
    severity = Severity.WARNING
    tags = ("correctness", "torch")
    triggers = (("CrossEntropyLoss", "cross_entropy", "NLLLoss", "nll_loss"), ("label",))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (
        ("import:torch",),
        ("name:CrossEntropyLoss", "name:cross_entropy", "name:NLLLoss", "name:nll_loss"),
        ("name:*label*", "string:labels"),
    )
    premise = {"torch": ">=1.0"}
    VALID = (
        # Pad id on both sides (the translation tutorial's pairing).
        Valid("""
            import torch.nn as nn
            from torch.nn.utils.rnn import pad_sequence
            def collate(batch):
                labels = pad_sequence([b[1] for b in batch], padding_value=PAD_IDX)
                return labels
            loss_fn = nn.CrossEntropyLoss(ignore_index=PAD_IDX)
            for labels in loader:
                loss = loss_fn(logits.reshape(-1, V), labels.reshape(-1))
            """),
        # -100 masking with the default ignore_index.
        Valid("""
            import torch.nn.functional as F
            for batch in loader:
                labels = batch["labels"]
                labels[labels == tokenizer.pad_token_id] = -100
                loss = F.cross_entropy(logits.view(-1, V), labels.view(-1))
            """),
        # Pad ids replaced by -100 after padding.
        Valid("""
            import torch
            from torch.nn.utils.rnn import pad_sequence
            criterion = torch.nn.CrossEntropyLoss()
            labels = pad_sequence(seqs, batch_first=True, padding_value=tok.pad_token_id)
            labels = labels.masked_fill(labels == tok.pad_token_id, -100)
            loss = criterion(out.view(-1, V), labels.view(-1))
            """),
        # ignore_index from a parameter: unknown, silent.
        Valid("""
            import torch.nn as nn
            def build(ignore):
                return nn.CrossEntropyLoss(ignore_index=ignore)
            labels[:, :n] = -100
            criterion = build(args.ignore)
            """),
        # Classification labels unrelated to a token-level -100 masking elsewhere.
        Valid("""
            import torch.nn as nn
            lm_labels = ids.masked_fill(attention_mask == 0, -100)
            criterion = nn.CrossEntropyLoss(ignore_index=0)
            for x, y in loader:
                loss = criterion(head(x), y)
            """),
    )
    INVALID = (
        Invalid(
            """
            import torch.nn as nn
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("gpt2")
            def build(prompt, answer):
                p, a = tokenizer(prompt)["input_ids"], tokenizer(answer)["input_ids"]
                return {"input_ids": p + a, "labels": [-100] * len(p) + a}
            criterion = nn.CrossEntropyLoss(ignore_index=tokenizer.pad_token_id)
            for batch in loader:
                logits = model(batch["input_ids"]).logits
                loss = criterion(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten())
            """,
            line=7,
            message="-100",
        ),
        # Pad-padded labels with the default ignore_index.
        Invalid(
            """
            import torch
            import torch.nn.functional as F
            from torch.nn.utils.rnn import pad_sequence
            def collate(batch):
                src = pad_sequence([b[0] for b in batch], batch_first=True, padding_value=PAD_ID)
                tgt_labels = pad_sequence([b[1] for b in batch], batch_first=True, padding_value=PAD_ID)
                return src, tgt_labels
            def train_step(model, src, tgt_labels):
                logits = model(src, tgt_labels)
                return F.cross_entropy(logits.transpose(1, 2), tgt_labels)
            """,
            line=10,
            message="default",
        ),
        # -1 masking with the default ignore_index (a Lightning module).
        Invalid(
            """
            import torch
            import lightning as L
            class LM(L.LightningModule):
                def __init__(self):
                    super().__init__()
                    self.loss = torch.nn.CrossEntropyLoss()
                def training_step(self, batch, batch_idx):
                    labels = batch["input_ids"].clone()
                    labels[batch["attention_mask"] == 0] = -1
                    return self.loss(self(batch).view(-1, self.vocab), labels.view(-1))
            """,
            line=6,
            message="-1",
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        labels = ctx.get(Labels)
        writes = labels.mask_writes()
        if not writes:
            return
        reported: Set[cst.Call] = set()
        for loss in self._losses(ctx):
            if loss.node in reported:
                continue
            keys = self._target_keys(ctx, loss.target)
            linked = [w for w in writes if w.target in keys]
            if not linked:
                continue
            ignore = IGNORE if loss.ignore is None else labels.value_kind(loss.ignore)
            masked = _effective(linked)
            if ignore is None or masked is None or not _differ(ignore, masked.kind):
                continue
            reported.add(loss.node)
            yield self._report(ctx, loss, masked, ignore)

    # -- losses --------------------------------------------------------------------------------
    def _losses(self, ctx: Context) -> Iterator[_Loss]:
        instances = ctx.get(Instances)
        for call in ctx.nodes(cst.Call):
            names = ctx.names.resolve(call.func)
            functional = next((n for n in names if n in _LOSS_FUNCTIONS), None)
            if functional is not None:
                binding = bind(call, _LOSS_FUNCTIONS[functional])
                target = binding.value("target")
                if target is not None and not binding.opaque:
                    yield _Loss(call, binding.value("ignore_index"), target)
                continue
            if names or not isinstance(call.func, (cst.Name, cst.Attribute)):
                continue
            kinds = instances.kinds(call.func, call)
            if not kinds or not all(k in _LOSS_CLASSES for k in kinds):
                continue
            constructor = constructor_of(instances, call.func, call)
            if constructor is None:
                continue
            made = bind(constructor, _LOSS_CLASSES[sorted(kinds)[0]])
            target = bind(call, _FORWARD).value("target")
            if target is not None and not made.opaque:
                yield _Loss(constructor, made.value("ignore_index"), target)

    @staticmethod
    def _target_keys(ctx: Context, target: cst.BaseExpression) -> Set[str]:
        keys = set()
        for node in ctx.get(Assignments).derivation(target):
            key = labels_key(node)
            if key is not None:
                keys.add(key)
        return keys

    @staticmethod
    def _report(ctx: Context, loss: _Loss, masked: MaskWrite, ignore: str) -> Diagnostic:
        row = ctx.locator.location(ctx.span(masked.node)[0]).row
        value = ctx.code(masked.value) if masked.value is not masked.node else "-100"
        name = ctx.code(loss.node.func)
        ignored = f"`ignore_index={ctx.code(loss.ignore)}`" if loss.ignore is not None else \
            "the default `ignore_index=-100`"
        if ignore == IGNORE or ignore == PAD and masked.kind != IGNORE and not masked.kind.startswith("-"):
            consequence = "so those positions are trained on as real targets"
        else:
            consequence = (f"so the {value} targets are out of the class range and the loss fails "
                           f"(\"Target {value} is out of bounds\", a device-side assert on CUDA)")
        return ctx.report(
            loss.node,
            f"labels are masked with `{value}` (line {row}) but `{name}` uses {ignored}: {consequence}",
            help="Use one value for both: mask labels with -100 and keep the default `ignore_index`, "
                 "or pass the pad id as `ignore_index`",
        )


def _effective(writes: List[MaskWrite]) -> Optional[MaskWrite]:
    """The value the labels end up masked with: -100 wins (pads replaced, prompts masked)."""
    for write in writes:
        if write.kind == IGNORE:
            return write
    return writes[0] if writes else None


def _differ(ignore: str, masked: str) -> bool:
    """Certainly different: a pad id may equal any literal except a negative one."""
    if ignore == masked:
        return False
    if PAD in (ignore, masked):
        other = masked if ignore == PAD else ignore
        return other.startswith("-")
    return True
