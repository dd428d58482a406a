from __future__ import annotations

from typing import Iterator, Optional

import libcst as cst

from mllint.analysis.hf import is_model_kind
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid

OLD, NEW = "torch_dtype", "dtype"
_LOADERS = frozenset({"from_pretrained", "from_config"})
_PIPELINE = "transformers.pipeline"


class TorchDtypeRenamed(Rule):
    """## What it does
    Checks for `torch_dtype=` passed to a transformers model loader
    (`AutoModelForCausalLM.from_pretrained(...)`, `T5ForConditionalGeneration.from_pretrained`,
    `AutoModel.from_config(...)`), to peft's `AutoPeftModel*.from_pretrained` (which passes its
    keyword arguments on to the transformers loader, peft `auto.py`), or to
    `transformers.pipeline(...)`. peft's `PeftModel.from_pretrained` is not a model loader of
    transformers and is left alone.

    ## Why is this bad?
    transformers 4.56.0 renamed the argument to `dtype`: `modeling_utils.py`,
    `PreTrainedModel.from_pretrained` pops `dtype` and keeps `torch_dtype` only "for BC",
    logging "`torch_dtype` is deprecated! Use `dtype` instead!" (4.56.0, 4.57.6, 5.0.0, 5.23.0;
    `PreTrainedModel._from_config` and `pipelines/__init__.py`, `pipeline` do the same). When
    both are given, `dtype` wins. The old spelling still works in every version up to 5.23.0, so
    this is a deprecation notice, not a bug: fix it while migrating so the code keeps working
    when the shim goes. The rule is off by default; select `MLL605` to enable it.

    Before 4.56 there is no `dtype` argument (4.55.4 `from_pretrained` reads only
    `torch_dtype`; an unknown `dtype=` would be passed on to the config instead), so the rule's
    premise is transformers >= 4.56 and the fix is never offered for older targets.

    ## Example
    ```python
    model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-3.2-1B", torch_dtype=torch.bfloat16)
    ```

    ## Use instead
    ```python
    model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-3.2-1B", dtype=torch.bfloat16)
    ```

    ## Fix safety
    The fix renames the keyword to `dtype`; it is safe for every version the rule runs for,
    which all map `torch_dtype` to `dtype`. When the call also passes `dtype=` or `**kwargs`, the
    fix is only displayed.

    ## References
    - transformers `modeling_utils.py`, `PreTrainedModel.from_pretrained` and `_from_config`
      (4.55.4, 4.56.0, 4.57.6, 5.0.0, 5.23.0)
    - transformers `models/auto/auto_factory.py`, `_BaseAutoModelClass.from_pretrained`
    - transformers `pipelines/__init__.py`, `pipeline`
    """

    code = "MLL605"
    name = "torch-dtype-renamed"
    summary = "`torch_dtype=` is deprecated in favour of `dtype=` since transformers 4.56"
    severity = Severity.INFO
    # The old spelling still works everywhere (a deprecation notice): enable it when migrating.
    default_enabled = False
    tags = ("transformers", "migration", "versions")
    triggers = ((OLD,),)
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = ((f"keyword:{OLD}",), ("import:transformers",))
    premise = {"transformers": ">=4.56"}
    VALID = (
        Valid("""
            import torch
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2", dtype=torch.float16)
            """),
        # Before 4.56, torch_dtype is the only spelling.
        Valid("""
            import torch
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2", torch_dtype=torch.float16)
            """, settings={"target_versions": {"transformers": "4.55.4"}}),
        # Other libraries' loaders keep their own argument names.
        Valid("""
            import torch
            import transformers
            from diffusers import StableDiffusionPipeline
            pipe = StableDiffusionPipeline.from_pretrained("sd", torch_dtype=torch.float16)
            """),
        # peft's adapter loader does not forward to transformers' `from_pretrained`.
        Valid("""
            import torch
            import transformers
            from peft import PeftModel
            model = PeftModel.from_pretrained(base, "adapter", torch_dtype=torch.float16)
            """),
        # A tokenizer does not take a dtype: not a model loader.
        Valid("""
            import transformers
            tok = transformers.AutoTokenizer.from_pretrained("gpt2", torch_dtype="auto")
            """),
    )
    INVALID = (
        Invalid(
            """
            import torch
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained(
                "mistralai/Mistral-7B-v0.1",
                torch_dtype=torch.bfloat16,
                device_map="auto",
            )
            """,
            line=5,
            message="transformers 5.23.0 (assumed",
            fix="""
            import torch
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained(
                "mistralai/Mistral-7B-v0.1",
                dtype=torch.bfloat16,
                device_map="auto",
            )
            """,
            applicability=Applicability.SAFE,
        ),
        Invalid(
            """
            from transformers import pipeline
            pipe = pipeline("text-generation", model="gpt2", torch_dtype="auto")
            """,
            line=2,
            message="transformers 4.56.0 (configuration)",
            fix="""
            from transformers import pipeline
            pipe = pipeline("text-generation", model="gpt2", dtype="auto")
            """,
            settings={"target_versions": {"transformers": "4.56.0"}},
        ),
        Invalid(
            """
            from transformers import AutoModel
            model = AutoModel.from_config(config, torch_dtype=dtype, **model_kwargs)
            """,
            line=2,
            applicability=Applicability.DISPLAY_ONLY,
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        fact = ctx.version_fact("transformers")
        for call in ctx.nodes(cst.Call):
            old = next((a for a in call.args if a.keyword is not None and a.keyword.value == OLD), None)
            if old is None:
                continue
            callee = self._callee(ctx, call)
            if callee is None:
                continue
            clash = any(a.star == "**" or (a.keyword is not None and a.keyword.value == NEW) for a in call.args)
            fix = ctx.fix(f"Rename to `{NEW}`", Applicability.DISPLAY_ONLY if clash else Applicability.SAFE,
                          ctx.replace(old.keyword, NEW))
            yield ctx.report(
                old,
                f"with {fact}, `{callee}({OLD}=...)` is deprecated (renamed `{NEW}` in 4.56; still "
                "mapped with a warning)",
                fix=fix,
                help=f"Pass `{NEW}=`",
            )

    @staticmethod
    def _callee(ctx: Context, call: cst.Call) -> Optional[str]:
        func = call.func
        if _PIPELINE in ctx.names.resolve(func):
            return "pipeline"
        if isinstance(func, cst.Attribute) and func.attr.value in _LOADERS:
            owners = sorted(n for n in ctx.names.resolve(func.value) if is_model_kind(n)
                            and n.startswith(("transformers.", "peft.AutoPeftModel")))
            if owners:
                return f"{owners[0].rsplit('.', 1)[-1]}.{func.attr.value}"
        return None
