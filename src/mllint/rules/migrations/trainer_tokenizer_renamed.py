from __future__ import annotations

from typing import Dict, Iterator, Optional, Tuple

import libcst as cst
from packaging.version import Version

from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid

OLD, NEW = "tokenizer", "processing_class"
# (package, deprecated since, removed since) per trainer class, read from each version's source:
# transformers `trainer.py`/`trainer_seq2seq.py`: plain `tokenizer` parameter in 4.45.2,
# `@deprecate_kwarg("tokenizer", new_name="processing_class", version="5.0.0")` in 4.46.0-4.57.6,
# only `processing_class` in 5.0.0 and 5.23.0.
# trl `sft_trainer.py`/`dpo_trainer.py`: `tokenizer` in 0.11.4, `deprecate_kwarg` in 0.12.0-0.15.2,
# only `processing_class` in 0.16.1; the other trainers switched without a shim in 0.12.0
# (no `**kwargs` in their `__init__`).
_TRANSFORMERS = ("transformers", Version("4.46"), Version("5.0"))
_TRL_SHIMMED = ("trl", Version("0.12"), Version("0.16"))
_TRL_RENAMED = ("trl", Version("0.12"), Version("0.12"))
TRAINERS: Dict[str, Tuple[str, Version, Version]] = {
    "transformers.Trainer": _TRANSFORMERS,
    "transformers.Seq2SeqTrainer": _TRANSFORMERS,
    "trl.SFTTrainer": _TRL_SHIMMED,
    "trl.DPOTrainer": _TRL_SHIMMED,
    **{f"trl.{name}": _TRL_RENAMED for name in (
        "ORPOTrainer", "KTOTrainer", "CPOTrainer", "RewardTrainer", "BCOTrainer", "OnlineDPOTrainer",
        "XPOTrainer", "NashMDTrainer", "GKDTrainer", "IterativeSFTTrainer")},
}


def _trainer(name: str) -> Optional[str]:
    """The table key for a canonical name (``trl.trainer.dpo_trainer.DPOTrainer`` -> ``trl.DPOTrainer``)."""
    if name in TRAINERS:
        return name
    head, last = name.split(".", 1)[0], name.rsplit(".", 1)[-1]
    key = f"{head}.{last}"
    return key if head == "trl" and key in TRAINERS else None


class TrainerTokenizerRenamed(Rule):
    """## What it does
    Checks for `tokenizer=` passed to `Trainer`, `Seq2SeqTrainer`, trl's `SFTTrainer`,
    `DPOTrainer` and the other trl trainers (`ORPOTrainer`, `KTOTrainer`, `RewardTrainer`, ...),
    or to a subclass of one of them defined in the file without its own `__init__`.

    ## Why is this bad?
    transformers 4.46.0 renamed the parameter to `processing_class` (it also takes image
    processors, feature extractors and processors): `trainer.py`, `Trainer.__init__` is decorated
    with `@deprecate_kwarg("tokenizer", new_name="processing_class", version="5.0.0")` from 4.46.0
    to 4.57.6, which maps the old keyword with a `FutureWarning`. transformers 5.x removed the
    shim (5.0.0, 5.23.0: `processing_class` only, no `**kwargs`), so `Trainer(tokenizer=tok)`
    raises `TypeError`, and so does `Seq2SeqTrainer`.

    trl followed in 0.12.0: `SFTTrainer` and `DPOTrainer` carried the same `deprecate_kwarg` shim
    until 0.15.2 and take only `processing_class` since 0.16; the other trl trainers
    (`ORPOTrainer`, `KTOTrainer`, `CPOTrainer`, `RewardTrainer`, `BCOTrainer`, `OnlineDPOTrainer`,
    `XPOTrainer`, `NashMDTrainer`, `GKDTrainer`, `IterativeSFTTrainer`) were renamed in 0.12.0
    without a shim. The transformers trainers are judged by the transformers target version
    (premise >= 4.46, where `processing_class` exists), the trl ones by the trl target version
    (>= 0.12; trl 0.12 itself requires transformers >= 4.46).

    ## Example
    ```python
    trainer = Trainer(model=model, args=args, train_dataset=ds, tokenizer=tokenizer)
    ```

    ## Use instead
    ```python
    trainer = Trainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
    ```

    ## Fix safety
    The fix renames the keyword to `processing_class`; it is safe, as the deprecation shim did
    exactly this. When the call also passes `processing_class=` (the shim raised for both) or
    `**kwargs`, the fix is only displayed.

    ## References
    - transformers `trainer.py`, `Trainer.__init__`; `trainer_seq2seq.py`, `Seq2SeqTrainer.__init__`;
      `utils/deprecation.py`, `deprecate_kwarg` (4.46.0, 4.57.6, 5.0.0, 5.23.0)
    - trl `trainer/sft_trainer.py`, `trainer/dpo_trainer.py` (0.11.4, 0.12.0, 0.15.2, 0.16.1)
    - https://huggingface.co/docs/transformers/main_classes/trainer
    """

    code = "MLL602"
    name = "trainer-tokenizer-renamed"
    summary = "`Trainer(tokenizer=...)` was renamed `processing_class` (transformers 4.46, trl 0.12) and removed since"
    severity = Severity.ERROR
    tags = ("transformers", "trl", "migration", "versions")
    triggers = ((OLD,), ("Trainer",))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = ((f"keyword:{OLD}",), ("import:transformers", "import:trl"))
    premise = {"transformers": ">=4.46"}
    VALID = (
        Valid("""
            from transformers import Trainer
            trainer = Trainer(model=model, args=args, processing_class=tokenizer)
            """),
        # Before 4.46 `tokenizer` is the parameter.
        Valid("""
            from transformers import Trainer
            trainer = Trainer(model=model, args=args, tokenizer=tokenizer)
            """, settings={"target_versions": {"transformers": "4.45.2"}}),
        # trl < 0.12: `tokenizer` is SFTTrainer's parameter.
        Valid("""
            from trl import SFTTrainer
            trainer = SFTTrainer(model=model, train_dataset=ds, tokenizer=tokenizer)
            """, settings={"target_versions": {"trl": "0.11.4", "transformers": "4.46.0"}}),
        # A subclass with its own __init__ has its own signature.
        Valid("""
            from transformers import Trainer
            class DistillTrainer(Trainer):
                def __init__(self, teacher, tokenizer=None, **kwargs):
                    super().__init__(processing_class=tokenizer, **kwargs)
                    self.teacher = teacher
            trainer = DistillTrainer(teacher, tokenizer=tokenizer, model=model)
            """),
        # Other calls taking a tokenizer.
        Valid("""
            from transformers import DataCollatorForSeq2Seq, pipeline
            collator = DataCollatorForSeq2Seq(tokenizer=tokenizer, model=model)
            pipe = pipeline("summarization", model=model, tokenizer=tokenizer)
            """),
    )
    INVALID = (
        Invalid(
            """
            from transformers import Seq2SeqTrainer
            trainer = Seq2SeqTrainer(
                model=model,
                args=args,
                train_dataset=tokenized["train"],
                tokenizer=tokenizer,
                data_collator=collator,
            )
            """,
            line=6,
            message="transformers 5.23.0 (assumed",
            fix="""
            from transformers import Seq2SeqTrainer
            trainer = Seq2SeqTrainer(
                model=model,
                args=args,
                train_dataset=tokenized["train"],
                processing_class=tokenizer,
                data_collator=collator,
            )
            """,
            applicability=Applicability.SAFE,
        ),
        Invalid(
            """
            from transformers import Trainer
            trainer = Trainer(model=model, args=args, tokenizer=tokenizer)
            """,
            line=2,
            message="deprecated",
            severity=Severity.WARNING,
            settings={"target_versions": {"transformers": "4.46.0"}},
        ),
        Invalid(
            """
            from trl import SFTTrainer
            trainer = SFTTrainer(model, train_dataset=ds, tokenizer=tok)
            """,
            line=2,
            message="trl 0.12.0 (configuration)",
            severity=Severity.WARNING,
            settings={"target_versions": {"trl": "0.12.0", "transformers": "4.46.0"}},
        ),
        Invalid(
            """
            from trl import SFTTrainer
            trainer = SFTTrainer(model, train_dataset=ds, tokenizer=tok)
            """,
            line=2,
            message="TypeError",
            settings={"target_versions": {"trl": "0.16.1", "transformers": "4.46.0"}},
        ),
        Invalid(
            """
            from trl import ORPOTrainer
            trainer = ORPOTrainer(model, args=cfg, tokenizer=tok)
            """,
            line=2,
            message="TypeError",
            settings={"target_versions": {"trl": "0.12.0", "transformers": "4.46.0"}},
        ),
        Invalid(
            """
            import transformers
            class WeightedTrainer(transformers.Trainer):
                def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
                    return super().compute_loss(model, inputs, return_outputs, **kwargs)
            trainer = WeightedTrainer(model=model, tokenizer=tok, processing_class=tok)
            """,
            line=5,
            applicability=Applicability.DISPLAY_ONLY,
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        local = self._local_subclasses(ctx)
        for call in ctx.nodes(cst.Call):
            old = next((a for a in call.args if a.keyword is not None and a.keyword.value == OLD), None)
            if old is None:
                continue
            trainer = self._trainer_of(ctx, call, local)
            if trainer is None:
                continue
            shown, key = trainer
            package, deprecated, removed = TRAINERS[key]
            version = ctx.target_version(package)
            if version is None or version < deprecated:
                continue
            fact = ctx.version_fact(package)
            if version >= removed:
                message = (f"with {fact}, `{shown}.__init__` has no `{OLD}` parameter (renamed "
                           f"`{NEW}` in {package} {deprecated}, shim removed in {removed}): this call "
                           "raises `TypeError`")
            else:
                message = (f"with {fact}, `{shown}({OLD}=...)` is deprecated (renamed `{NEW}` in "
                           f"{package} {deprecated}) and raises `TypeError` from {package} {removed} on")
            clash = any(a.star == "**" or (a.keyword is not None and a.keyword.value == NEW) for a in call.args)
            fix = ctx.fix(f"Rename to `{NEW}`", Applicability.DISPLAY_ONLY if clash else Applicability.SAFE,
                          ctx.replace(old.keyword, NEW))
            yield ctx.report(old, message, fix=fix, help=f"Pass the tokenizer as `{NEW}=`",
                             severity=None if version >= removed else Severity.WARNING)

    @staticmethod
    def _local_subclasses(ctx: Context) -> Dict[str, str]:
        """Classes of the file deriving from a table trainer without their own ``__init__``."""
        out: Dict[str, str] = {}
        for cls in ctx.nodes(cst.ClassDef):
            if any(isinstance(s, cst.FunctionDef) and s.name.value == "__init__" for s in cls.body.body):
                continue
            for base in cls.bases:
                keys = {k for k in map(_trainer, ctx.names.resolve(base.value)) if k}
                if len(keys) == 1:
                    out[cls.name.value] = keys.pop()
        return out

    @staticmethod
    def _trainer_of(ctx: Context, call: cst.Call, local: Dict[str, str]) -> Optional[Tuple[str, str]]:
        """(name as written, table key) of the trainer ``call`` constructs."""
        if isinstance(call.func, cst.Name) and call.func.value in local:
            return call.func.value, local[call.func.value]
        keys = {k for k in map(_trainer, ctx.names.resolve(call.func)) if k}
        if len(keys) != 1:
            return None
        key = keys.pop()
        return key.rsplit(".", 1)[-1], key
