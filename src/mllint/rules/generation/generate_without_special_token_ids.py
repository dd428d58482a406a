from __future__ import annotations

from typing import Iterator, List, Optional, Set, Tuple

import libcst as cst
from packaging.version import Version

from mllint.analysis.batches import Batches
from mllint.analysis.dataflow import Assignments
from mllint.analysis.hf import ENCODER_DECODER, families, is_hf_model
from mllint.analysis.instances import Instances
from mllint.analysis.signatures import GENERATE, bind
from mllint.core.context import Context
from mllint.core.diagnostic import Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid

GENERATION_CONFIG = "transformers.GenerationConfig"
# From 4.42 a config passed to generate() gets every unset special id from the model's own
# (4.42.4 ``_prepare_special_tokens``; 4.45.2 on ``_prepare_generation_config``).
_RESTORED = Version("4.42")
# 4.41 took EOS and pad only from the passed config (``_prepare_special_tokens``, no fallback).
_EOS_LOST = Version("4.41")


class GenerateWithoutSpecialTokenIds(Rule):
    """## What it does
    Checks for a new `GenerationConfig(...)` that lacks the special token ids where it *replaces*
    the model's own ones:

    - assigned to `model.generation_config` of a Hugging Face model without `eos_token_id`
      (or, for an encoder-decoder model, without `decoder_start_token_id` and `bos_token_id`),
      in every transformers version;
    - passed as `generate(generation_config=...)` when `target-versions` says transformers < 4.42:
      on 4.41 without `eos_token_id`, and before 4.42 without `pad_token_id` for a padded batch
      given no `attention_mask`.

    A config loaded with `GenerationConfig.from_pretrained(...)`, a copy of
    `model.generation_config`, one built from `**kwargs`, or one completed elsewhere in the module
    (`cfg.eos_token_id = ...`, `cfg.update(...)`, `model.generate(eos_token_id=...)`) is left alone.

    ## Why is this bad?
    `generate()` takes its defaults from `model.generation_config` and nothing else: in 4.30.0,
    4.46.0, 4.57.6 and 5.23.0 no code in `generation/utils.py` falls back to `model.config`, and
    `GenerationMixin._prepare_generation_config` starts from `self.generation_config`. A fresh
    `GenerationConfig()` has `eos_token_id=None` (`generation/configuration_utils.py`), so
    assigning one drops the checkpoint's EOS id: `_get_stopping_criteria` adds an
    `EosTokenCriteria` only when an EOS id is set, every generation runs to the length limit,
    and `save_pretrained` writes the config without it. An encoder-decoder model without
    `decoder_start_token_id` and `bos_token_id` makes `_prepare_special_tokens` raise
    "`decoder_start_token_id` or `bos_token_id` has to be defined for encoder-decoder generation".

    A config *passed* to `generate()` is different: it is merged with the model's. 4.42.4 takes
    each unset special id from `model.generation_config` in `_prepare_special_tokens`; 4.45.2 and
    4.46.0 copy the four special ids in `_prepare_generation_config` ("fallback ALL special
    tokens"); since 4.50 every field left at its global default is filled from the model's config
    (`use_model_defaults` in 4.57.6, `generation_config.update(..., defaults_only=True)` in
    5.23.0). So from 4.42 on a fresh passed config loses nothing, and the rule is silent on it,
    also when no target version is known. Before 4.42 it did: 4.41 takes EOS and pad only from
    the passed config (4.41.0/4.41.2 `_prepare_special_tokens`), so without `eos_token_id`
    generation never stops at EOS; and up to 4.41 `generate()` infers the attention mask from the
    passed config's pad id (4.30.0 and 4.40.2:
    `_prepare_attention_mask_for_generation(inputs_tensor, generation_config.pad_token_id, ...)`),
    so without one a padded batch given no `attention_mask` attends to its padding, even for T5
    whose own pad id would have allowed the inference.

    Deliberately not reported:
    - `generate()` calls that merely pass no `pad_token_id`/`eos_token_id`: checkpoints ship them
      in `generation_config.json`, and a missing pad id falls back to EOS
      (`_prepare_special_tokens`), which is harmless when the attention mask is passed (MLL202
      reports batches without one);
    - a tokenizer given a new pad token while the model's pad id stays unset: with the attention
      mask passed, the model's pad id only fills finished rows, and without it MLL202 reports;
    - `EncoderDecoderModel.from_encoder_decoder_pretrained(...)` without ids: it fails loudly
      (`shift_tokens_right` raises "Make sure to set the decoder_start_token_id attribute of the
      model's configuration." at the first training step, `generate()` raises as above).

    ## Example
    ```python
    model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-3.2-1B-Instruct")
    model.generation_config = GenerationConfig(max_new_tokens=256, do_sample=True, temperature=0.7)
    ```

    ## Use instead
    ```python
    model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-3.2-1B-Instruct")
    model.generation_config.update(max_new_tokens=256, do_sample=True, temperature=0.7)
    ```
    or pass `eos_token_id=tokenizer.eos_token_id` (and `pad_token_id`) to the new config.

    ## Fix safety
    There is no fix: the right ids live in the checkpoint or the tokenizer, and whether the
    model's other defaults (sampling settings of a chat checkpoint) should survive is the
    author's choice between `update(...)` and a complete new config.

    ## References
    - transformers `generation/utils.py`, `GenerationMixin._prepare_generation_config`,
      `_prepare_special_tokens` and `_get_stopping_criteria`
    - transformers `generation/configuration_utils.py`, `GenerationConfig.__init__`
    - https://github.com/huggingface/transformers/issues/25353
    - https://github.com/huggingface/transformers/pull/31254
    """

    code = "MLL201"
    name = "generate-without-special-token-ids"
    summary = "a new `GenerationConfig` without EOS/pad/decoder-start ids replaces the model's own"
    severity = Severity.WARNING
    tags = ("correctness", "transformers", "generation")
    triggers = (("GenerationConfig",), ("generation_config", "generate"))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (
        ("import:transformers",),
        ("name:GenerationConfig",),
        ("assign:generation_config", "call:generate"),
    )
    premise = {"transformers": ">=4.0"}
    VALID = (
        # Updating the model's config keeps its ids.
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            model.generation_config.update(max_new_tokens=64, do_sample=True)
            """),
        # A complete new config.
        Valid("""
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            model.generation_config = GenerationConfig(max_new_tokens=64, eos_token_id=tokenizer.eos_token_id,
                                                       pad_token_id=tokenizer.pad_token_id)
            """),
        # Loaded from the checkpoint, or built from **kwargs: cannot tell, stay silent.
        Valid("""
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            model.generation_config = GenerationConfig.from_pretrained("gpt2", max_new_tokens=64)
            other.generation_config = GenerationConfig(**settings)
            """),
        # Completed after construction.
        Valid("""
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            config = GenerationConfig(max_new_tokens=64)
            config.eos_token_id = tokenizer.eos_token_id
            model.generation_config = config
            """),
        # Not a Hugging Face model (a trainer's own attribute, passed explicitly later).
        Valid("""
            from transformers import GenerationConfig
            class MyTrainer:
                def __init__(self):
                    self.generation_config = GenerationConfig(max_new_tokens=32, do_sample=True)
            """),
        # Passed to generate(): merged with the model's ids since 4.42 (and no version known here).
        Valid("""
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            out = model.generate(**inputs, generation_config=GenerationConfig(max_new_tokens=64))
            """),
        Valid("""
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            out = model.generate(**inputs, generation_config=GenerationConfig(max_new_tokens=64))
            """, settings={"target_versions": {"transformers": "4.46.0"}}),
        # Before 4.41 the EOS id is restored; the mask is passed, so the missing pad id is harmless.
        Valid("""
            from transformers import AutoModelForSeq2SeqLM, GenerationConfig
            model = AutoModelForSeq2SeqLM.from_pretrained("t5-small")
            enc = tokenizer(texts, padding=True, return_tensors="pt")
            out = model.generate(enc.input_ids, attention_mask=enc.attention_mask,
                                 generation_config=GenerationConfig(num_beams=4))
            """, settings={"target_versions": {"transformers": "4.30.0"}}),
        # transformers 4.41 with a complete passed config.
        Valid("""
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            config = GenerationConfig(max_new_tokens=64, eos_token_id=50256, pad_token_id=50256)
            enc = tokenizer(texts, padding=True, return_tensors="pt")
            out = model.generate(enc.input_ids, generation_config=config)
            """, settings={"target_versions": {"transformers": "4.41.0"}}),
        # The EOS id passed to generate() lands in the config.
        Valid("""
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            config = GenerationConfig(max_new_tokens=64)
            out = model.generate(ids, generation_config=config, eos_token_id=tokenizer.eos_token_id)
            """, settings={"target_versions": {"transformers": "4.41.2"}}),
    )
    INVALID = (
        Invalid(
            """
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-3.2-1B-Instruct")
            model.eval()
            model.generation_config = GenerationConfig(
                max_new_tokens=256,
                do_sample=True,
                temperature=0.7,
                pad_token_id=tokenizer.eos_token_id,
            )
            """,
            line=4,
            message="without `eos_token_id`",
        ),
        # Through a variable, on an encoder-decoder model: EOS and the decoder start are missing.
        Invalid(
            """
            import transformers
            model = transformers.T5ForConditionalGeneration.from_pretrained("t5-small")
            gen_cfg = transformers.GenerationConfig(max_length=128, num_beams=4)
            model.generation_config = gen_cfg
            """,
            line=4,
            message="`decoder_start_token_id`",
        ),
        # The pad id set later does not bring the EOS id back.
        Invalid(
            """
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            model.generation_config = GenerationConfig(max_new_tokens=64)
            model.generation_config.pad_token_id = tokenizer.pad_token_id
            """,
            line=3,
            message="without `eos_token_id`, and",
        ),
        # transformers 4.41: the passed config's missing EOS is not restored.
        Invalid(
            """
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained("mistralai/Mistral-7B-Instruct-v0.2")
            config = GenerationConfig(max_new_tokens=512, do_sample=True, top_p=0.9)
            inputs = tokenizer(prompt, return_tensors="pt").to("cuda")
            out = model.generate(**inputs, generation_config=config)
            """,
            line=5,
            message="transformers 4.41",
            settings={"target_versions": {"transformers": "4.41.1"}},
        ),
        # transformers < 4.41: the mask is inferred from the passed config's (missing) pad id.
        Invalid(
            """
            from transformers import AutoModelForSeq2SeqLM, GenerationConfig
            model = AutoModelForSeq2SeqLM.from_pretrained("t5-small")
            enc = tokenizer(texts, padding=True, return_tensors="pt")
            out = model.generate(enc.input_ids, GenerationConfig(num_beams=4, max_new_tokens=64))
            """,
            line=4,
            message="attention mask",
            settings={"target_versions": {"transformers": "4.30.0"}},
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        instances = ctx.get(Instances)
        for assign in ctx.nodes(cst.Assign):
            for target in assign.targets:
                t = target.target
                if not (isinstance(t, cst.Attribute) and t.attr.value == "generation_config"):
                    continue
                fresh = self._fresh_config(ctx, assign.value)
                kinds = instances.kinds(t.value, assign)
                if fresh is None or not is_hf_model(kinds):
                    continue
                later = self._set_later(ctx, fresh, t.value)
                if later is None:
                    continue
                missing = self._missing_for_model(fresh[1] | later, families(kinds) == {ENCODER_DECODER})
                if missing:
                    yield ctx.report(
                        assign,
                        f"`{ctx.code(t)}` is replaced by a new `GenerationConfig` without "
                        f"{_names(missing)}, and `generate()` reads its defaults only from there, so "
                        f"the checkpoint's ids are gone: " + self._consequence(missing),
                        help=(f"Use `{ctx.code(t)}.update(...)`, or pass `eos_token_id=` (and "
                              "`pad_token_id=`) to the new config"),
                    )
        version = ctx.target_version("transformers")
        if version is not None and version < _RESTORED:
            yield from self._passed_configs(ctx, version)

    def _passed_configs(self, ctx: Context, version: Version) -> Iterator[Diagnostic]:
        instances = ctx.get(Instances)
        for call in ctx.nodes(cst.Call):
            func = call.func
            if not (isinstance(func, cst.Attribute) and func.attr.value == "generate"):
                continue
            binding = bind(call, GENERATE)
            value = binding.value("generation_config")
            fresh = None if value is None else self._fresh_config(ctx, value)
            later = None if fresh is None else self._set_later(ctx, fresh, None)
            if later is None or not is_hf_model(instances.kinds(func.value, call)):
                continue
            given = fresh[1] | later | set(binding.kwargs)
            harms = []
            if version >= _EOS_LOST and "eos_token_id" not in given and not _may_set_options(ctx, call):
                harms.append(f"transformers {version} takes the special ids only from the config "
                             "passed to `generate()`, so without `eos_token_id` generation does not "
                             "stop at EOS and runs to the length limit")
            if "pad_token_id" not in given and not binding.maybe_passed("attention_mask") \
                    and ctx.get(Batches).generate_ids(binding) is not None:
                harms.append(f"transformers {version} infers the attention mask from the passed "
                             "config's `pad_token_id`, which is unset, so this padded batch (given no "
                             "`attention_mask`) attends to its padding")
            if harms:
                yield ctx.report(
                    value,
                    f"`{ctx.code(func)}()` gets a new `GenerationConfig` without the special token ids: "
                    + "; and ".join(harms) + " (transformers >= 4.42 restores them from the model)",
                    help="Pass `eos_token_id=` and `pad_token_id=` to the config, or build it from "
                         "`model.generation_config`",
                )

    @staticmethod
    def _fresh_config(ctx: Context, value: cst.BaseExpression) -> Optional[Tuple[Optional[cst.Name], Set[str]]]:
        """``(variable, keywords)`` of a ``GenerationConfig(...)`` constructor call (``value``
        itself or the value last assigned to the name ``value``) without ``*``/``**`` splats."""
        variable = None
        if isinstance(value, cst.Name):
            variable, value = value, ctx.get(Assignments).reaching(value)
        if not isinstance(value, cst.Call) or GENERATION_CONFIG not in ctx.names.resolve(value.func):
            return None
        if any(a.star or a.keyword is None for a in value.args):
            return None
        return variable, {a.keyword.value for a in value.args if a.keyword is not None}

    @staticmethod
    def _set_later(ctx: Context, fresh: Tuple[Optional[cst.Name], Set[str]],
                   model: Optional[cst.BaseExpression]) -> Optional[Set[str]]:
        """The ids the module sets on the config elsewhere (``cfg.eos_token_id = ...``,
        ``model.generation_config.eos_token_id = ...``, ``model.generate(eos_token_id=...)``);
        None when it may set anything (``cfg.update(...)``, ``model.generate(**kwargs)``)."""
        variable = fresh[0]
        owners = {variable.value} if variable is not None else set()
        if model is not None:
            owners.add(f"{ctx.code(model)}.generation_config")
        found: Set[str] = set()
        for node in ctx.nodes(cst.Assign):
            for target in node.targets:
                t = target.target
                if isinstance(t, cst.Attribute) and ctx.code(t.value) in owners:
                    found.add(t.attr.value)
        for call in ctx.nodes(cst.Call):
            func = call.func
            if not isinstance(func, cst.Attribute):
                continue
            if func.attr.value == "update" and ctx.code(func.value) in owners:
                return None
            if model is not None and func.attr.value == "generate" and ctx.code(func.value) == ctx.code(model):
                if _may_set_options(ctx, call):
                    return None
                found |= {a.keyword.value for a in call.args if a.keyword is not None}
        return found

    @staticmethod
    def _missing_for_model(given: Set[str], encoder_decoder: bool) -> List[str]:
        missing = [] if "eos_token_id" in given else ["eos_token_id"]
        if missing and "pad_token_id" not in given:
            missing.append("pad_token_id")
        if encoder_decoder and not given & {"decoder_start_token_id", "bos_token_id"}:
            missing.append("decoder_start_token_id")
        return missing

    @staticmethod
    def _consequence(missing: List[str]) -> str:
        parts = []
        if "eos_token_id" in missing:
            parts.append("generation never stops at EOS and runs to the length limit (and "
                         "`save_pretrained` saves the config without it)")
        if "decoder_start_token_id" in missing:
            parts.append("`generate()` raises \"`decoder_start_token_id` or `bos_token_id` has to be "
                         "defined for encoder-decoder generation\"")
        return "; ".join(parts)


def _may_set_options(ctx: Context, call: cst.Call) -> bool:
    """Whether a splat may pass generation settings: ``*args``, or ``**x`` other than a
    tokenizer's encoding (which holds model inputs only)."""
    batches = ctx.get(Batches)
    return any(a.star == "*" or (a.star == "**" and batches.origin(a.value).tokenizer is None)
               for a in call.args)


def _names(ids: List[str]) -> str:
    quoted = [f"`{i}`" for i in ids]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]
