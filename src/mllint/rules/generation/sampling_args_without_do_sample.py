from __future__ import annotations

from typing import Iterator, List, Optional, Set, Tuple

import libcst as cst
from packaging.version import Version

from mllint.analysis.generation import Generation, GenerateCall, Layer, Setting, greedy_model, is_literal, number
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Fix, Severity
from mllint.core.rule import Invalid, Rule, Valid

# Sampling-only settings and the value at which ``GenerationConfig.validate`` stays quiet
# (None: any value counts). ``top_h`` exists in 5.x only.
_SAMPLING = (("temperature", 1.0), ("top_p", 1.0), ("top_k", 50.0), ("min_p", None), ("typical_p", 1.0),
             ("epsilon_cutoff", 0.0), ("eta_cutoff", 0.0), ("top_h", None))
# Before 4.50 a config passed to generate() replaced the model's (only special ids were copied).
_MERGED = Version("4.50")
# 4.50 to 4.57 fill a passed config's *default-valued* fields (do_sample=False too) from the model.
_V5 = Version("5.0")
_WARNS = Version("4.46")


class SamplingArgsWithoutDoSample(Rule):
    """## What it does
    Checks for sampling settings (`temperature`, `top_p`, `top_k`, `min_p`, `typical_p`,
    `epsilon_cutoff`, `eta_cutoff`, `top_h`) given to `generate()` of a Hugging Face model, or to a
    new `GenerationConfig(...)`, when the code shows that decoding is greedy (or beam search):

    - the same call or config says `do_sample=False`;
    - `model.generation_config` is replaced by a new `GenerationConfig` without `do_sample`, or
      set to `do_sample=False`;
    - a new `GenerationConfig` without `do_sample` is passed to `generate()` and the target
      transformers is older than 4.50 (it replaced the model's config then);
    - the model was loaded from a checkpoint known to set no `do_sample` (`gpt2`, `t5-*`,
      `facebook/opt-*`, `EleutherAI/pythia-*`, BART, BLOOM, Marian `opus-mt`, ...).

    Values at the library default (`temperature=1.0`, `top_p=1.0`, `top_k=50`) and
    `temperature=0` (a request for greedy decoding) are not reported, nor `top_k` with
    `penalty_alpha` (contrastive search uses it). The rule stays silent when `do_sample` is set to
    anything but a literal `False`, when a `**kwargs` of unknown content or a loaded config may set
    it, and for checkpoints it does not know: many chat checkpoints ship `"do_sample": true` in
    their `generation_config.json` and sample without it.

    ## Why is this bad?
    transformers applies temperature, top-k, top-p and the other warpers only when
    `generation_config.do_sample` is true (`generation/utils.py`,
    `GenerationMixin._get_logits_processor` in 4.57.6 and 5.23.0, `_get_logits_warper` called only
    `if generation_config.do_sample` in 4.30.0); `do_sample` defaults to False
    (`generation/configuration_utils.py`: `kwargs.pop("do_sample", False)` in 4.30.0 to 4.57.6,
    `"do_sample": False` in `_get_default_generation_params` in 5.23.0). So the call decodes
    greedily (or with plain beam search when `num_beams > 1`) and the settings do nothing: outputs
    are deterministic and repetitive although the code looks like sampling. `GenerationConfig.validate`
    flags it: 4.46.0 warns "`do_sample` is set to `False`. However, `temperature` is set to ... --
    this flag is only used in sample-based generation modes", 4.57.6 and 5.23.0 log "The following
    generation flags are not valid and may be ignored: [...]", 4.30.0 says nothing.
    `save_pretrained` of such a config raises "GenerationConfig is invalid" in 4.57.6
    (`validate(strict=True)`), and in 5.23.0 when the config was modified.

    A config passed to `generate()` is merged with the model's since 4.50 (4.57.6
    `_prepare_generation_config`: fields left at the global default are filled from
    `model.generation_config`; 5.23.0: unset fields), so then the checkpoint decides.

    ## Example
    ```python
    model = AutoModelForCausalLM.from_pretrained("gpt2")
    out = model.generate(**inputs, max_new_tokens=50, temperature=0.7, top_p=0.9)
    ```

    ## Use instead
    ```python
    out = model.generate(**inputs, max_new_tokens=50, do_sample=True, temperature=0.7, top_p=0.9)
    ```
    or drop the sampling settings if greedy decoding is intended.

    ## Fix safety
    When `do_sample` is not set, the fix adds `do_sample=True` before the first sampling setting.
    It is unsafe: outputs become random (which is what the settings ask for) and differ from run
    to run. When the code says `do_sample=False` there is no fix: which of the two is meant is the
    author's choice.

    ## References
    - transformers `generation/configuration_utils.py`, `GenerationConfig.validate`
    - transformers `generation/utils.py`, `GenerationMixin._get_logits_processor` and `_prepare_generation_config`
    - https://huggingface.co/docs/transformers/generation_strategies
    """

    code = "MLL206"
    name = "sampling-args-without-do-sample"
    summary = "sampling settings (`temperature`, `top_p`, `top_k`, ...) in greedy `generate()` are ignored"
    severity = Severity.WARNING
    tags = ("correctness", "transformers", "generation")
    triggers = (("generate", "GenerationConfig"),
                ("temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h"))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (
        ("import:transformers", "import:peft"),
        ("call:generate", "name:GenerationConfig"),
        ("name:temperature", "name:top_p", "name:top_k", "name:min_p", "name:typical_p", "name:epsilon_cutoff",
         "name:eta_cutoff", "name:top_h", "string:temperature", "string:top_p", "string:top_k"),
    )
    premise = {"transformers": ">=4.30"}
    VALID = (
        # do_sample=True.
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            out = model.generate(**inputs, do_sample=True, temperature=0.7, top_p=0.9)
            """),
        # do_sample computed: cannot tell.
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            out = model.generate(ids, do_sample=args.temperature > 0, temperature=args.temperature)
            """),
        # A splat of unknown content may set do_sample.
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            out = model.generate(ids, temperature=0.7, **gen_kwargs)
            """),
        # Checkpoint not known to be greedy (chat checkpoints often sample by default).
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-3.1-8B-Instruct")
            out = model.generate(**inputs, max_new_tokens=256, temperature=0.6, top_p=0.9)
            """),
        # Library defaults and temperature 0 (greedy requested).
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            out = model.generate(ids, do_sample=False, temperature=1.0, top_p=1.0, top_k=50)
            out = model.generate(ids, temperature=0.0)
            """),
        # Contrastive search uses top_k.
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            out = model.generate(ids, penalty_alpha=0.6, top_k=4, max_new_tokens=64)
            """),
        # A GenerationConfig that sets do_sample, passed to generate().
        Valid("""
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            cfg = GenerationConfig(do_sample=True, top_k=30, temperature=0.8, max_new_tokens=40)
            out = model.generate(ids, generation_config=cfg)
            """),
        # The model's config replaced, but every call samples.
        Valid("""
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            model.generation_config = GenerationConfig(temperature=0.7, max_new_tokens=64)
            out = model.generate(ids, do_sample=True)
            """),
        # A passed config is merged with a checkpoint's since 4.50: the checkpoint decides.
        Valid("""
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained(path)
            out = model.generate(ids, generation_config=GenerationConfig(temperature=0.7))
            """, settings={"target_versions": {"transformers": "4.57.6"}}),
        # Not a Hugging Face model.
        Valid("""
            model = MiniGPT(cfg)
            out = model.generate(idx, max_new_tokens=100, temperature=0.8, top_k=200)
            """),
    )
    INVALID = (
        Invalid(
            """
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("gpt2")
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            inputs = tokenizer("Once upon a time", return_tensors="pt")
            out = model.generate(**inputs, max_new_tokens=50, temperature=0.7, top_p=0.9)
            """,
            line=5,
            message="`temperature=0.7`, `top_p=0.9`",
            fix="""
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("gpt2")
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            inputs = tokenizer("Once upon a time", return_tensors="pt")
            out = model.generate(**inputs, max_new_tokens=50, do_sample=True, temperature=0.7, top_p=0.9)
            """,
            applicability=Applicability.UNSAFE,
        ),
        # Explicitly greedy: no fix.
        Invalid(
            """
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained(model_path)
            out = model.generate(ids, do_sample=False, temperature=0.2)
            """,
            line=3,
            message="`do_sample=False`",
        ),
        # Beam search on an encoder-decoder model.
        Invalid(
            """
            from transformers import T5ForConditionalGeneration
            model = T5ForConditionalGeneration.from_pretrained("google/flan-t5-base")
            enc = tokenizer(documents, padding=True, truncation=True, return_tensors="pt")
            out = model.generate(**enc, num_beams=4, top_k=10)
            """,
            line=4,
            message="beam search",
        ),
        # The model's config replaced by one without do_sample.
        Invalid(
            """
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained(path)
            model.generation_config = GenerationConfig(max_new_tokens=128, temperature=0.9, top_k=40)
            out = model.generate(input_ids=ids, attention_mask=mask)
            """,
            line=3,
            message="`temperature=0.9`, `top_k=40`",
            fix="""
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained(path)
            model.generation_config = GenerationConfig(max_new_tokens=128, do_sample=True, temperature=0.9, top_k=40)
            out = model.generate(input_ids=ids, attention_mask=mask)
            """,
            applicability=Applicability.UNSAFE,
        ),
        # 4.50 to 4.57 may take do_sample from the model for a passed config; gpt2 sets none: greedy.
        # The config spells do_sample=False, so no fix is offered.
        Invalid(
            """
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            cfg = GenerationConfig(do_sample=False, top_p=0.8)
            out = model.generate(ids, generation_config=cfg)
            """,
            line=3,
            message="checkpoint `gpt2`",
            settings={"target_versions": {"transformers": "4.57.6"}},
        ),
        # transformers < 4.50: a passed config replaced the model's.
        Invalid(
            """
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained(path)
            cfg = GenerationConfig(max_new_tokens=64, top_p=0.95)
            out = model.generate(ids, generation_config=cfg)
            """,
            line=3,
            message="transformers 4.46.0",
            settings={"target_versions": {"transformers": "4.46.0"}},
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        generation = ctx.get(Generation)
        reported: Set[int] = set()
        for use in generation.calls:
            found = self._greedy_call(ctx, generation, use)
            if found is None:
                continue
            why, explicit = found
            ignored = [s for s in self._sampling(ctx, use.kwargs) + self._sampling(ctx, use.config)
                       if not (s.name == "top_k" and use.setting("penalty_alpha") is not None)]
            ignored = [s for s in ignored if id(s.node) not in reported]
            if ignored:
                reported.update(id(s.node) for s in ignored)
                yield self._report(ctx, ignored, f"`{ctx.code(use.call.func)}()`", why, explicit,
                                   number(ctx, _value(use.setting("num_beams"))))
        yield from self._model_configs(ctx, generation, reported)

    def _greedy_call(self, ctx: Context, generation: Generation, use: GenerateCall
                     ) -> Optional[Tuple[str, bool]]:
        """(why the call decodes without sampling, whether the code says so itself)."""
        version = ctx.target_version("transformers")
        own = use.kwargs.get("do_sample")
        if own is not None or not use.kwargs.complete:
            return ("it passes `do_sample=False`", True) if own is not None and is_literal(own.value, "False") else None
        config = use.config
        if config is not None:
            if not config.complete:
                return None
            passed = config.get("do_sample")
            if passed is not None:
                if not is_literal(passed.value, "False"):
                    return None
                if version is None or not (_MERGED <= version < _V5):
                    return "its `GenerationConfig` sets `do_sample=False`", True
            elif version is not None and version < _MERGED:
                return (f"with {ctx.version_fact('transformers')} the `GenerationConfig` passed replaces the "
                        "model's, and its `do_sample` defaults to False", False)
        model = greedy_model(generation, use.receiver, use.call)
        return None if model is None else (model[0], False)

    def _model_configs(self, ctx: Context, generation: Generation, reported: Set[int]) -> Iterator[Diagnostic]:
        """``model.generation_config = GenerationConfig(temperature=...)`` without ``do_sample``,
        where no ``generate()`` on the model sets it."""
        for assign in ctx.nodes(cst.Assign):
            target = assign.targets[0].target
            if len(assign.targets) != 1 or not (isinstance(target, cst.Attribute)
                                                and target.attr.value == "generation_config"):
                continue
            receiver = target.value
            layer = generation.model_layer(receiver)
            if layer.replaced_by is not assign or layer.may_set("do_sample") or generation.opaque_calls_on(receiver):
                continue
            calls = generation.calls_on(receiver)
            if not calls or any(c.may_set("do_sample") or c.config is not None for c in calls):
                continue
            ignored = [s for s in self._sampling(ctx, layer) if id(s.node) not in reported
                       and not (s.name == "top_k" and layer.get("penalty_alpha") is not None)]
            if ignored:
                reported.update(id(s.node) for s in ignored)
                why = (f"`{ctx.code(target)}` is replaced by a new `GenerationConfig` without `do_sample`, "
                       "which defaults to False")
                yield self._report(ctx, ignored, f"`{ctx.code(calls[0].call.func)}()`", why, False,
                                   number(ctx, _value(layer.get("num_beams"))))

    @staticmethod
    def _sampling(ctx: Context, layer: Optional[Layer]) -> List[Setting]:
        """The layer's sampling settings with a literal, non-default value."""
        out = []
        if layer is None:
            return out
        for name, default in _SAMPLING:
            setting = layer.get(name)
            if setting is None:
                continue
            if default is None:
                if not is_literal(setting.value, "None"):
                    out.append(setting)
                continue
            value = number(ctx, setting.value)
            if value is None or value == default or (name == "temperature" and value == 0.0):
                continue
            out.append(setting)
        return out

    @staticmethod
    def _report(ctx: Context, ignored: List[Setting], where: str, why: str, explicit: bool,
                beams: Optional[float]) -> Diagnostic:
        version = ctx.target_version("transformers")
        ignored = sorted(ignored, key=lambda s: ctx.order(s.node))
        shown = ", ".join(f"`{s.name}={ctx.code(s.value)}`" for s in ignored)
        mode = f"beam search (`num_beams={int(beams)}`)" if beams is not None and beams > 1 else "greedy decoding"
        if version is not None and version >= _WARNS:
            noise = (f"with {ctx.version_fact('transformers')} `GenerationConfig.validate` only warns that they "
                     "are not used")
        else:
            noise = f"with {ctx.version_fact('transformers')} not even a warning is given"
        message = (f"{shown} {'is' if len(ignored) == 1 else 'are'} ignored: {where} runs {mode} because {why}, "
                   f"and sampling settings act only with `do_sample=True`; {noise}")
        fix: Optional[Fix] = None
        first = ignored[0]
        owner = ctx.parent(first.node)
        if not explicit and first.keyword is not None and isinstance(owner, cst.Call) and not any(
                a.keyword is not None and a.keyword.value == "do_sample" for a in owner.args):
            start = ctx.span(first.node)[0]
            fix = ctx.fix("Add `do_sample=True`", Applicability.UNSAFE, ctx.edit(start, start, "do_sample=True, "))
        return ctx.report(first.node, message, fix=fix,
                          help="Pass `do_sample=True` to sample, or drop the sampling settings for greedy decoding")


def _value(setting: Optional[Setting]) -> Optional[cst.BaseExpression]:
    return None if setting is None else setting.value
