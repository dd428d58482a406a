from __future__ import annotations

from typing import FrozenSet, Iterator, Optional, Set

import libcst as cst
from packaging.version import Version

from mllint.analysis.instances import UNKNOWN, Instances
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid

OLD, NEW = "evaluation_strategy", "eval_strategy"
_TRANSFORMERS = frozenset({"transformers.TrainingArguments", "transformers.Seq2SeqTrainingArguments"})
# trl configuration classes that subclass `TrainingArguments` (trl 0.15.2 `trainer/*_config.py`;
# trl 1.16.0 through `trainer/base_config.py` `_BaseConfig(TrainingArguments)`).
_TRL = frozenset({"SFTConfig", "DPOConfig", "ORPOConfig", "KTOConfig", "CPOConfig", "RewardConfig",
                  "BCOConfig", "GRPOConfig", "RLOOConfig", "OnlineDPOConfig", "XPOConfig", "NashMDConfig",
                  "GKDConfig", "PRMConfig"})
# transformers `training_args.py`: `eval_strategy` added and `evaluation_strategy` deprecated in
# 4.41.0; `evaluation_strategy` still a field in 4.50.0, gone in 4.51.0.
_REMOVED = Version("4.51")


def _is_arguments_class(name: str) -> bool:
    return name in _TRANSFORMERS or (name.startswith("trl.") and name.rsplit(".", 1)[-1] in _TRL)


class EvaluationStrategyRenamed(Rule):
    """## What it does
    Checks for the `evaluation_strategy` argument of `TrainingArguments`,
    `Seq2SeqTrainingArguments`, the trl configurations that subclass them (`SFTConfig`,
    `DPOConfig`, `GRPOConfig`, ...) and dataclasses of the file derived from them, and for
    `args.evaluation_strategy = ...` assigned to such an object after it was built.

    ## Why is this bad?
    transformers 4.41.0 renamed the field to `eval_strategy` (`training_args.py`,
    `TrainingArguments`); `evaluation_strategy` stayed as a deprecated field whose value
    `__post_init__` copied over, with the warning "`evaluation_strategy` is deprecated and will be
    removed in version 4.46". It was still there in 4.50.0 and is gone from 4.51.0 on (4.57.6,
    5.x): `TrainingArguments` is a dataclass, so `evaluation_strategy=` raises
    `TypeError: __init__() got an unexpected keyword argument 'evaluation_strategy'`, which is
    how many older notebooks and tutorials now fail. Assigning the attribute after construction
    never had an effect since 4.41 (the copy happens in `__post_init__`), so evaluation silently
    stays at its default.

    The premise is transformers >= 4.41 (where `eval_strategy` exists); on older targets the
    old spelling is correct and the rule does not run. From 4.41 to 4.50 the finding is a
    deprecation; from 4.51 on it is an error.

    ## Example
    ```python
    args = TrainingArguments("out", evaluation_strategy="epoch", save_strategy="epoch")
    ```

    ## Use instead
    ```python
    args = TrainingArguments("out", eval_strategy="epoch", save_strategy="epoch")
    ```

    ## Fix safety
    The fix renames the keyword (or the attribute) to `eval_strategy`. It is safe: the new field
    has the same type and meaning, and exists in every version the rule runs for. When the
    call also passes `eval_strategy=` or `**kwargs` (which may hold it), the fix is only
    displayed.

    ## References
    - transformers `training_args.py`, `TrainingArguments` (4.41.0, 4.50.0, 4.51.0, 5.23.0)
    - https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments
    """

    code = "MLL601"
    name = "evaluation-strategy-renamed"
    summary = "`evaluation_strategy` was renamed `eval_strategy` (deprecated in transformers 4.41, removed in 4.51)"
    severity = Severity.ERROR
    tags = ("transformers", "trl", "migration", "versions")
    triggers = ((OLD,),)
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = ((f"keyword:{OLD}", f"assign:{OLD}"), ("import:transformers", "import:trl"))
    premise = {"transformers": ">=4.41"}
    VALID = (
        Valid("""
            from transformers import TrainingArguments
            args = TrainingArguments("out", eval_strategy="epoch")
            """),
        # Before 4.41 the old name is the only one.
        Valid("""
            from transformers import TrainingArguments
            args = TrainingArguments("out", evaluation_strategy="epoch")
            """, settings={"target_versions": {"transformers": "4.40.2"}}),
        # Another library's arguments class with a field of that name.
        Valid("""
            from transformers import TrainingArguments
            from mytrainer import Arguments
            args = Arguments(evaluation_strategy="epoch")
            """),
        # An unknown receiver.
        Valid("""
            import transformers
            def configure(args):
                args.evaluation_strategy = "steps"
            """),
    )
    INVALID = (
        Invalid(
            """
            from transformers import Seq2SeqTrainingArguments
            args = Seq2SeqTrainingArguments(
                output_dir="t5-summarization",
                evaluation_strategy="epoch",
                predict_with_generate=True,
            )
            """,
            line=4,
            message="transformers 4.51.0 (configuration)",
            fix="""
            from transformers import Seq2SeqTrainingArguments
            args = Seq2SeqTrainingArguments(
                output_dir="t5-summarization",
                eval_strategy="epoch",
                predict_with_generate=True,
            )
            """,
            applicability=Applicability.SAFE,
            settings={"target_versions": {"transformers": "4.51.0"}},
        ),
        Invalid(
            """
            import transformers
            args = transformers.TrainingArguments("out", evaluation_strategy="steps", eval_steps=500)
            """,
            line=2,
            message="deprecated",
            severity=Severity.WARNING,
            settings={"target_versions": {"transformers": "4.41.0"}},
        ),
        Invalid(
            """
            from trl import SFTConfig
            config = SFTConfig(output_dir="sft", evaluation_strategy="steps")
            """,
            line=2,
            message="TypeError",
            fix="""
            from trl import SFTConfig
            config = SFTConfig(output_dir="sft", eval_strategy="steps")
            """,
        ),
        Invalid(
            """
            from dataclasses import dataclass
            from transformers import TrainingArguments
            @dataclass
            class MyArguments(TrainingArguments):
                lora_r: int = 8
            args = MyArguments("out", evaluation_strategy="epoch", **extra)
            """,
            line=6,
            applicability=Applicability.DISPLAY_ONLY,
        ),
        Invalid(
            """
            from transformers import TrainingArguments
            args = TrainingArguments("out")
            args.evaluation_strategy = "epoch"
            """,
            line=3,
            message="no effect",
            fix="""
            from transformers import TrainingArguments
            args = TrainingArguments("out")
            args.eval_strategy = "epoch"
            """,
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        version = ctx.target_version("transformers")
        if version is None:
            return
        fact = ctx.version_fact("transformers")
        removed = version >= _REMOVED
        classes = self._classes(ctx)
        for call in ctx.nodes(cst.Call):
            old = next((a for a in call.args if a.keyword is not None and a.keyword.value == OLD), None)
            if old is None:
                continue
            callee = self._callee(ctx, call, classes)
            if callee is None:
                continue
            if removed:
                message = (f"with {fact}, `{callee}` has no `{OLD}` field (renamed `{NEW}` in 4.41, "
                           f"removed in 4.51): this call raises `TypeError`")
            else:
                message = (f"with {fact}, `{OLD}` of `{callee}` is deprecated (renamed `{NEW}` in 4.41) "
                           "and removed in 4.51")
            clash = any(a.star == "**" or (a.keyword is not None and a.keyword.value == NEW) for a in call.args)
            fix = ctx.fix(f"Rename to `{NEW}`", Applicability.DISPLAY_ONLY if clash else Applicability.SAFE,
                          ctx.replace(old.keyword, NEW))
            yield ctx.report(old, message, fix=fix, help=f"Pass `{NEW}=` instead",
                             severity=None if removed else Severity.WARNING)
        instances = ctx.get(Instances)
        for assign in ctx.nodes(cst.Assign):
            for t in assign.targets:
                target = t.target
                if not (isinstance(target, cst.Attribute) and target.attr.value == OLD):
                    continue
                kinds = instances.kinds(target.value, assign)
                if not kinds or UNKNOWN in kinds or not all(k in classes or _is_arguments_class(k) for k in kinds):
                    continue
                yield ctx.report(
                    target,
                    f"with {fact}, setting `{OLD}` on built training arguments has no effect "
                    f"(the field is `{NEW}` since 4.41; the old value was only copied in `__post_init__`), "
                    "so evaluation stays at its default",
                    fix=ctx.fix(f"Rename to `{NEW}`", Applicability.SAFE, ctx.replace(target.attr, NEW)),
                )

    @staticmethod
    def _classes(ctx: Context) -> FrozenSet[str]:
        """Classes of the file that derive from an arguments class."""
        out: Set[str] = set()
        for cls in ctx.nodes(cst.ClassDef):
            if any(_is_arguments_class(n) for base in cls.bases for n in ctx.names.resolve(base.value)):
                out.add(cls.name.value)
        return frozenset(out)

    @staticmethod
    def _callee(ctx: Context, call: cst.Call, classes: FrozenSet[str]) -> Optional[str]:
        if isinstance(call.func, cst.Name) and call.func.value in classes:
            return call.func.value
        names = ctx.names.resolve(call.func)
        match = sorted(n for n in names if _is_arguments_class(n))
        return match[0].rsplit(".", 1)[-1] if match else None
