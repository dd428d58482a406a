from __future__ import annotations

from typing import Iterator, Optional

import libcst as cst
from packaging.version import Version

from mllint.analysis.hf import is_hf_model
from mllint.analysis.instances import UNKNOWN, Instances
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid

OLD, NEW = "lm_labels", "labels"
# transformers 3.0.0 `modeling_t5.py`/`modeling_gpt2.py`/`modeling_openai.py`: `labels` added,
# `lm_labels` popped from `**kwargs` with a deprecation warning; 4.0.0: no `lm_labels` anywhere
# (`T5ForConditionalGeneration.forward` takes no `**kwargs` up to 4.57.6); 5.x: forward takes
# `**kwargs: Unpack[TransformersKwargs]`, which swallows the keyword.
_REMOVED = Version("4.0")
_SWALLOWED = Version("5.0")


class LmLabelsRenamed(Rule):
    """## What it does
    Checks for `lm_labels=` passed to a Hugging Face model's forward (`model(..., lm_labels=...)`
    or `model.forward(...)`), where the model is one the file loads with `from_pretrained`,
    `from_config` or a transformers/peft constructor, as T5 fine-tuning scripts of 2019-2020 did.

    ## Why is this bad?
    transformers 3.0.0 renamed the argument to `labels` (`modeling_t5.py`,
    `T5ForConditionalGeneration.forward`; also `GPT2DoubleHeadsModel` and
    `OpenAIGPTDoubleHeadsModel`), popping `lm_labels` from `**kwargs` with a deprecation warning.
    transformers 4.0.0 removed it: up to 4.57.6 the forward takes no `**kwargs`, so the call
    raises `TypeError: forward() got an unexpected keyword argument 'lm_labels'`. In 5.x
    (5.23.0) the forward takes `**kwargs: Unpack[TransformersKwargs]`, so the keyword is
    swallowed instead: no labels reach the model, no loss is computed (`outputs.loss` is
    `None`), and the failure surfaces later, at `loss.backward()` or in a training loop that
    trains on nothing.

    The premise is transformers >= 3.0 (where `labels` exists): a deprecation in 3.x, an error
    from 4.0 on.

    ## Example
    ```python
    outputs = model(input_ids=ids, attention_mask=mask, lm_labels=labels)
    ```

    ## Use instead
    ```python
    outputs = model(input_ids=ids, attention_mask=mask, labels=labels)
    ```

    ## Fix safety
    The fix renames the keyword to `labels`, which is what the 3.x deprecation shim did; it is
    safe. When the call also passes `labels=` or `**kwargs`, the fix is only displayed.

    ## References
    - transformers `models/t5/modeling_t5.py`, `T5ForConditionalGeneration.forward`
      (3.0.0 `modeling_t5.py`, 4.0.0, 4.57.6, 5.23.0)
    - https://github.com/huggingface/transformers/releases/tag/v3.0.0
    """

    code = "MLL604"
    name = "lm-labels-renamed"
    summary = "`lm_labels=` was renamed `labels` in transformers 3.0 and removed in 4.0"
    severity = Severity.ERROR
    tags = ("transformers", "migration", "versions")
    triggers = ((OLD,),)
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = ((f"keyword:{OLD}",), ("import:transformers", "import:peft"))
    premise = {"transformers": ">=3.0"}
    VALID = (
        Valid("""
            from transformers import T5ForConditionalGeneration
            model = T5ForConditionalGeneration.from_pretrained("t5-small")
            loss = model(input_ids=ids, labels=labels).loss
            """),
        # Before 3.0 `lm_labels` is the parameter.
        Valid("""
            from transformers import T5ForConditionalGeneration
            model = T5ForConditionalGeneration.from_pretrained("t5-small")
            loss = model(input_ids=ids, lm_labels=labels)[0]
            """, settings={"target_versions": {"transformers": "2.11.0"}}),
        # A home-grown model whose forward takes lm_labels.
        Valid("""
            import torch.nn as nn
            import transformers
            class Summarizer(nn.Module):
                def forward(self, input_ids, lm_labels=None):
                    return self.t5(input_ids=input_ids, labels=lm_labels)
            model = Summarizer()
            out = model(ids, lm_labels=labels)
            """),
    )
    INVALID = (
        Invalid(
            """
            import pytorch_lightning as pl
            from transformers import T5ForConditionalGeneration
            class T5FineTuner(pl.LightningModule):
                def __init__(self, hparams):
                    super().__init__()
                    self.model = T5ForConditionalGeneration.from_pretrained(hparams.model_name)
                def training_step(self, batch, batch_idx):
                    return self.model(input_ids=batch["source_ids"], lm_labels=batch["target_ids"])[0]
            """,
            line=8,
            fix="""
            import pytorch_lightning as pl
            from transformers import T5ForConditionalGeneration
            class T5FineTuner(pl.LightningModule):
                def __init__(self, hparams):
                    super().__init__()
                    self.model = T5ForConditionalGeneration.from_pretrained(hparams.model_name)
                def training_step(self, batch, batch_idx):
                    return self.model(input_ids=batch["source_ids"], labels=batch["target_ids"])[0]
            """,
        ),
        Invalid(
            """
            from transformers import T5ForConditionalGeneration
            model = T5ForConditionalGeneration.from_pretrained("t5-base")
            for batch in loader:
                outputs = model(
                    input_ids=batch["source_ids"],
                    attention_mask=batch["source_mask"],
                    lm_labels=batch["target_ids"],
                )
                outputs[0].backward()
            """,
            line=7,
            message="transformers 5.23.0 (assumed",
            fix="""
            from transformers import T5ForConditionalGeneration
            model = T5ForConditionalGeneration.from_pretrained("t5-base")
            for batch in loader:
                outputs = model(
                    input_ids=batch["source_ids"],
                    attention_mask=batch["source_mask"],
                    labels=batch["target_ids"],
                )
                outputs[0].backward()
            """,
            applicability=Applicability.SAFE,
        ),
        Invalid(
            """
            from transformers import T5ForConditionalGeneration
            model = T5ForConditionalGeneration.from_pretrained("t5-base")
            loss = model.forward(input_ids=ids, lm_labels=y)[0]
            """,
            line=3,
            message="TypeError",
            settings={"target_versions": {"transformers": "4.0.0"}},
        ),
        Invalid(
            """
            from transformers import GPT2DoubleHeadsModel
            model = GPT2DoubleHeadsModel.from_pretrained("gpt2")
            out = model(ids, mc_token_ids=mc, lm_labels=lm, mc_labels=mc_y)
            """,
            line=3,
            message="deprecated",
            severity=Severity.WARNING,
            settings={"target_versions": {"transformers": "3.0.0"}},
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        version = ctx.target_version("transformers")
        if version is None:
            return
        fact = ctx.version_fact("transformers")
        instances = ctx.get(Instances)
        for call in ctx.nodes(cst.Call):
            old = next((a for a in call.args if a.keyword is not None and a.keyword.value == OLD), None)
            if old is None:
                continue
            model = self._model(call)
            if model is None:
                continue
            kinds = instances.kinds(model, call)
            if UNKNOWN in kinds or not is_hf_model(kinds):
                continue
            if version >= _SWALLOWED:
                message = (f"with {fact}, `{OLD}` is not a parameter of the model's forward (renamed "
                           f"`{NEW}` in 3.0, removed in 4.0) and lands in its `**kwargs`: no labels "
                           "reach the model and no loss is computed")
            elif version >= _REMOVED:
                message = (f"with {fact}, the model's forward has no `{OLD}` parameter (renamed `{NEW}` "
                           "in 3.0, removed in 4.0): this call raises `TypeError`")
            else:
                message = f"with {fact}, `{OLD}` is deprecated (renamed `{NEW}` in 3.0) and removed in 4.0"
            clash = any(a.star == "**" or (a.keyword is not None and a.keyword.value == NEW) for a in call.args)
            fix = ctx.fix(f"Rename to `{NEW}`", Applicability.DISPLAY_ONLY if clash else Applicability.SAFE,
                          ctx.replace(old.keyword, NEW))
            yield ctx.report(old, message, fix=fix, help=f"Pass `{NEW}=`",
                             severity=None if version >= _REMOVED else Severity.WARNING)

    @staticmethod
    def _model(call: cst.Call) -> Optional[cst.BaseExpression]:
        """The model a forward call runs: ``model(...)``, ``self.model(...)`` or ``model.forward(...)``."""
        func = call.func
        if isinstance(func, cst.Attribute) and func.attr.value == "forward":
            return func.value
        return func if isinstance(func, (cst.Name, cst.Attribute)) else None
