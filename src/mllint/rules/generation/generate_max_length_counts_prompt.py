from __future__ import annotations

from typing import Iterator, Optional, Set

import libcst as cst
from packaging.version import Version

from mllint.analysis.batches import strip_moves
from mllint.analysis.dataflow import Assignments
from mllint.analysis.generation import Generation, Layer
from mllint.analysis.hf import DECODER_ONLY, families, is_hf_model
from mllint.analysis.instances import Instances
from mllint.analysis.signatures import GENERATE, bind
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Fix, Severity
from mllint.core.rule import Invalid, Rule, Valid

# transformers 4.46.0, 4.57.6 and 5.23.0 raise in ``_validate_generated_length``; 4.30.0 logs.
_RAISES = Version("4.46")
# Attributes holding a model's context size: ``max_length`` set to one of them is a cap, not a budget.
_NON_TEXT_INPUTS = frozenset({"images", "audio", "audios", "videos", "pixel_values"})
_TEXT_INPUTS = frozenset({"text", "input_ids", "prompt"})
_CONTEXT_ATTRS = frozenset({"model_max_length", "max_position_embeddings", "n_positions", "n_ctx"})
# Tensor methods whose result holds the receiver's tokens (its length does not depend on the arguments).
_SAME_TOKENS_METHODS = frozenset({"to", "cuda", "cpu", "long", "int", "unsqueeze", "squeeze", "view", "reshape",
                                  "repeat", "expand", "flatten", "detach", "clone", "contiguous"})


class GenerateMaxLengthCountsPrompt(Rule):
    """## What it does
    Checks for `max_length=N` given to `generate()` of a decoder-only Hugging Face model
    (`*ForCausalLM`, `*LMHeadModel`, and peft wrappers of them): as a keyword of the call (or of a
    local `**gen_kwargs` dict), in a new `GenerationConfig(max_length=N)` passed as
    `generation_config=`, or written to `model.generation_config.max_length`. Nothing is reported
    when `max_new_tokens` is set as well (it wins), when the value is computed from the prompt
    (`input_ids.shape[1] + 50`, `len(ids) + n`, any arithmetic) or is the model's context size
    (`tokenizer.model_max_length`, `config.max_position_embeddings`), when no prompt is passed
    (`generate(pixel_values=...)` of a captioning model starts from the BOS token), when the
    prompt is literal text or token ids written in the source (its length is fixed, so the total
    is a known choice), for encoder-decoder models,
    for receivers whose kind is unknown, and when a `**kwargs` of unknown content may carry
    `max_new_tokens`.

    ## Why is this bad?
    For a decoder-only model the sequence `generate()` extends *is* the prompt, so `max_length`
    bounds prompt plus answer: transformers `generation/utils.py` stops at
    `generation_config.max_length` total tokens (`MaxLengthCriteria`), and only rewrites it to
    `max_new_tokens + input_ids_length` when `max_new_tokens` is set
    (`GenerationMixin._prepare_generated_length` in 4.46.0, 4.57.6 and 5.23.0, inline in
    `generate` in 4.30.0). A 200-token prompt with `max_length=256` gets at most 56 new tokens,
    and the budget shrinks silently as prompts grow. When the prompt alone reaches `max_length`,
    `GenerationMixin._validate_generated_length` raises `ValueError("Input length of input_ids is
    ..., but `max_length` is set to ...")` in 4.46.0, 4.57.6 and 5.23.0; 4.30.0 only logs that
    message and still appends a token. For encoder-decoder models the same check measures the
    decoder input (`decoder_input_ids`, the start token), so `max_length` counts output tokens
    only and the rule stays silent.

    When both are set, `max_new_tokens` takes precedence and transformers logs "Both
    `max_new_tokens` (=...) and `max_length`(=...) seem to have been set" (all four versions).
    The text-generation pipeline is not checked: its `max_length` also truncates the prompt in
    5.23.0 (`TextGenerationPipeline._sanitize_parameters`).

    ## Example
    ```python
    model = AutoModelForCausalLM.from_pretrained("gpt2")
    inputs = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**inputs, max_length=128)
    ```

    ## Use instead
    ```python
    out = model.generate(**inputs, max_new_tokens=128)
    ```

    ## Fix safety
    The fix renames `max_length` to `max_new_tokens` (in the call, the `GenerationConfig(...)` or
    the attribute assignment). It is unsafe: outputs get longer by the prompt length, which is
    the point but changes run time, memory, and any code that relied on the total length.

    ## References
    - transformers `generation/utils.py`, `GenerationMixin._prepare_generated_length` and `_validate_generated_length`
    - transformers `generation/configuration_utils.py`, `GenerationConfig` (`max_length`, `max_new_tokens`)
    - https://github.com/huggingface/transformers/issues/40751
    """

    code = "MLL205"
    name = "generate-max-length-counts-prompt"
    summary = "`max_length` in `generate()` of a decoder-only model counts the prompt tokens too"
    severity = Severity.WARNING
    tags = ("correctness", "transformers", "generation")
    triggers = (("generate",), ("max_length",))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (
        ("import:transformers", "import:peft"),
        ("call:generate",),
        ("keyword:max_length", "assign:max_length", "string:max_length"),
    )
    premise = {"transformers": ">=4.30"}
    VALID = (
        # max_new_tokens counts new tokens only.
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            out = model.generate(**inputs, max_new_tokens=128)
            """),
        # Both set: max_new_tokens wins.
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            out = model.generate(**inputs, max_length=512, max_new_tokens=128)
            """),
        # Encoder-decoder: max_length counts decoder tokens only.
        Valid("""
            from transformers import AutoModelForSeq2SeqLM
            model = AutoModelForSeq2SeqLM.from_pretrained("t5-small")
            enc = tokenizer(texts, max_length=512, truncation=True, return_tensors="pt")
            out = model.generate(**enc, max_length=64, num_beams=4)
            """),
        # The budget is computed from the prompt length.
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            out = model.generate(ids, max_length=ids.shape[1] + 50)
            limit = len(ids[0]) + 20
            out = model.generate(ids, max_length=limit)
            """),
        # The model's context size is a cap, not an output budget.
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            out = model.generate(ids, max_length=model.config.max_position_embeddings)
            """),
        # Unknown receiver, and a home-grown model.
        Valid("""
            out = model.generate(ids, max_length=100)
            gpt = MiniGPT(cfg)
            gpt.generate(ids, max_length=100)
            """),
        # A splat of unknown content may carry max_new_tokens; a loaded config may too.
        Valid("""
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            out = model.generate(ids, max_length=100, **gen_kwargs)
            cfg = GenerationConfig.from_pretrained("gpt2")
            out = model.generate(ids, max_length=100, generation_config=cfg)
            """),
        # A GenerationConfig with max_new_tokens.
        Valid("""
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            cfg = GenerationConfig(max_length=2048, max_new_tokens=256)
            out = model.generate(ids, generation_config=cfg)
            """),
        # The model's max_length raised as a cap while every call passes max_new_tokens.
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            model.generation_config.max_length = 1024
            out = model.generate(ids, max_new_tokens=200)
            """),
        # No text prompt: an image-captioning model generates from its BOS token.
        Valid("""
            from transformers import AutoModelForCausalLM, AutoProcessor
            processor = AutoProcessor.from_pretrained("microsoft/git-base")
            model = AutoModelForCausalLM.from_pretrained("microsoft/git-base")
            inputs = processor(images=image, return_tensors="pt")
            out = model.generate(**inputs, max_length=50)
            out = model.generate(pixel_values=inputs.pixel_values, max_length=50)
            """),
        # The prompt is literal text (or literal token ids): its length is fixed and known, so
        # max_length is a total the author chose with the prompt in view.
        Valid("""
            import torch
            from transformers import AutoTokenizer, GPT2LMHeadModel
            tok = AutoTokenizer.from_pretrained("gpt2")
            lm = GPT2LMHeadModel.from_pretrained("gpt2")
            enc = tok("The capital of France is", return_tensors="pt")
            ids = enc.input_ids.to(device)
            lm.generate(ids, do_sample=False, max_length=20)
            lm.generate(**enc, max_length=20)
            fixed = torch.tensor([[464, 3290, 318]], dtype=torch.long)
            lm.generate(fixed.unsqueeze(0)[0], max_length=12)
            """),
        # max_length of the tokenizer call only.
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            enc = tokenizer(prompts, max_length=256, truncation=True, return_tensors="pt")
            out = model.generate(**enc, max_new_tokens=64)
            """),
    )
    INVALID = (
        Invalid(
            """
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("gpt2")
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            inputs = tokenizer(prompt, return_tensors="pt")
            out = model.generate(**inputs, max_length=128, do_sample=True)
            """,
            line=5,
            message="counts the prompt tokens",
            fix="""
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("gpt2")
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            inputs = tokenizer(prompt, return_tensors="pt")
            out = model.generate(**inputs, max_new_tokens=128, do_sample=True)
            """,
            applicability=Applicability.UNSAFE,
        ),
        # transformers 4.30: only a warning when the prompt is too long.
        Invalid(
            """
            from transformers import GPT2LMHeadModel
            model = GPT2LMHeadModel.from_pretrained("gpt2")
            out = model.generate(input_ids, max_length=50)
            """,
            line=3,
            message="only logs",
            settings={"target_versions": {"transformers": "4.30.0"}},
        ),
        # A Lightning module with a peft-wrapped model and a local gen_kwargs dict.
        Invalid(
            """
            import lightning as L
            from peft import get_peft_model
            from transformers import AutoModelForCausalLM
            class Lit(L.LightningModule):
                def __init__(self, lora):
                    super().__init__()
                    self.model = get_peft_model(AutoModelForCausalLM.from_pretrained("mistralai/Mistral-7B-v0.1"), lora)
                def predict_step(self, batch, batch_idx):
                    gen_kwargs = {"max_length": 256, "num_beams": 1}
                    return self.model.generate(input_ids=batch["input_ids"], **gen_kwargs)
            """,
            line=9,
            message="makes `generate()` raise",
        ),
        # A GenerationConfig passed to generate().
        Invalid(
            """
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained("EleutherAI/pythia-410m")
            gen_config = GenerationConfig(max_length=200, num_beams=4)
            out = model.generate(ids, generation_config=gen_config)
            """,
            line=3,
            fix="""
            from transformers import AutoModelForCausalLM, GenerationConfig
            model = AutoModelForCausalLM.from_pretrained("EleutherAI/pythia-410m")
            gen_config = GenerationConfig(max_new_tokens=200, num_beams=4)
            out = model.generate(ids, generation_config=gen_config)
            """,
            applicability=Applicability.UNSAFE,
        ),
        # Written to the model's generation config.
        Invalid(
            """
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B")
            model.generation_config.max_length = 300
            inputs = tokenizer(prompt, return_tensors="pt")
            out = model.generate(**inputs)
            """,
            line=3,
            message="`model.generation_config.max_length = 300`",
            fix="""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B")
            model.generation_config.max_new_tokens = 300
            inputs = tokenizer(prompt, return_tensors="pt")
            out = model.generate(**inputs)
            """,
            applicability=Applicability.UNSAFE,
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        generation = ctx.get(Generation)
        reported: Set[int] = set()
        for use in generation.calls:
            if families(use.kinds) != {DECODER_ONLY}:
                continue
            if use.may_set("max_new_tokens") or generation.model_layer(use.receiver).may_set("max_new_tokens"):
                continue
            setting = use.setting("max_length")
            if setting is None or id(setting.node) in reported or not self._budget(ctx, setting.value) \
                    or not self._has_prompt(ctx, use.call) or self._literal_prompt(ctx, use.call):
                continue
            call = f"`{ctx.code(use.call.func)}()`"
            if use.kwargs.get("max_length") is None:
                if not self._only_decoder_only(generation, use.config):
                    continue
                call = f"the `GenerationConfig` passed to {call}"
            reported.add(id(setting.node))
            yield self._report(ctx, use.kinds, setting.node, f"`max_length={ctx.code(setting.value)}` in {call}",
                               ctx.code(setting.value), setting.keyword)
        yield from self._model_writes(ctx, generation)

    def _model_writes(self, ctx: Context, generation: Generation) -> Iterator[Diagnostic]:
        """``model.generation_config.max_length = N`` on a decoder-only model."""
        instances = ctx.get(Instances)
        for assign in ctx.nodes(cst.Assign):
            target = assign.targets[0].target
            if len(assign.targets) != 1 or not (isinstance(target, cst.Attribute)
                                                and target.attr.value == "max_length"):
                continue
            owner = target.value
            if not (isinstance(owner, cst.Attribute) and owner.attr.value == "generation_config"):
                continue
            receiver = owner.value
            kinds = instances.kinds(receiver, assign)
            if not is_hf_model(kinds) or families(kinds) != {DECODER_ONLY} or not self._budget(ctx, assign.value):
                continue
            if generation.model_layer(receiver).may_set("max_new_tokens") or generation.opaque_calls_on(receiver) \
                    or any(c.may_set("max_new_tokens") for c in generation.calls_on(receiver)):
                continue
            yield self._report(ctx, kinds, assign, f"`{ctx.code(target)} = {ctx.code(assign.value)}`",
                               ctx.code(assign.value), target.attr)

    @staticmethod
    def _has_prompt(ctx: Context, call: cst.Call) -> bool:
        """The call passes a prompt: ``input_ids``/``inputs_embeds``, a positional input, or a
        ``**x`` other than a processor's output made from images or audio alone (then the
        sequence starts from the BOS token and ``max_length`` is all output)."""
        binding = bind(call, GENERATE)
        if binding.passed("inputs") or binding.passed("input_ids") or binding.passed("inputs_embeds"):
            return True
        for arg in call.args:
            if arg.star == "*":
                return True
            if arg.star == "**":
                value = strip_moves(arg.value)
                if isinstance(value, cst.Name):
                    value = strip_moves(ctx.get(Assignments).reaching(value) or value)
                if not (isinstance(value, cst.Call) and all(a.keyword is not None for a in value.args)
                        and {a.keyword.value for a in value.args} & _NON_TEXT_INPUTS
                        and not {a.keyword.value for a in value.args} & _TEXT_INPUTS):
                    return True
        return False

    @classmethod
    def _literal_prompt(cls, ctx: Context, call: cst.Call) -> bool:
        """Every prompt of the call is written in the source (``tokenizer("Once upon a time")``,
        ``torch.tensor([[464, 3290]])``): its length is fixed, so ``max_length`` is a known total
        chosen with the prompt in view, not a budget that shrinks as prompts grow."""
        binding = bind(call, GENERATE)
        prompts = [binding.value(name) for name in ("inputs", "input_ids", "inputs_embeds")]
        prompts = [p for p in prompts if p is not None]
        for arg in call.args:
            if arg.star == "*":
                return False
            if arg.star == "**":
                prompts.append(arg.value)
        return bool(prompts) and all(cls._literal(ctx, p, 0) for p in prompts)

    @classmethod
    def _literal(cls, ctx: Context, expr: cst.BaseExpression, depth: int) -> bool:
        """``expr`` is computed from literal text or token ids only (through local names,
        attribute/key access, tensor moves and reshapes, and calls whose data arguments are all
        literal)."""
        if depth > 12:
            return False
        if isinstance(expr, (cst.SimpleString, cst.ConcatenatedString, cst.Integer)):
            return True
        if isinstance(expr, (cst.List, cst.Tuple)):
            return bool(expr.elements) and all(not isinstance(e, cst.StarredElement)
                                               and cls._literal(ctx, e.value, depth + 1) for e in expr.elements)
        if isinstance(expr, cst.Name):
            value = ctx.get(Assignments).reaching(expr)
            return value is not None and cls._literal(ctx, value, depth + 1)
        if isinstance(expr, (cst.Attribute, cst.Subscript)):
            return cls._literal(ctx, expr.value, depth + 1)
        if isinstance(expr, cst.Call):
            if isinstance(expr.func, cst.Attribute) and expr.func.attr.value in _SAME_TOKENS_METHODS:
                return cls._literal(ctx, expr.func.value, depth + 1)
            if any(a.star for a in expr.args):
                return False
            data = [a.value for a in expr.args if a.keyword is None or a.keyword.value in _TEXT_INPUTS]
            return bool(data) and all(cls._literal(ctx, d, depth + 1) for d in data)
        return False

    @staticmethod
    def _only_decoder_only(generation: Generation, config: Optional[Layer]) -> bool:
        """A new config whose every ``generate()`` is decoder-only (an encoder-decoder user's
        ``max_length`` counts output tokens only)."""
        if config is None or config.constructor is None:
            return False
        users = [c for c in generation.calls if c.config is not None and c.config.constructor is config.constructor]
        return all(families(c.kinds) == {DECODER_ONLY} for c in users)

    @staticmethod
    def _budget(ctx: Context, value: cst.BaseExpression) -> bool:
        """``value`` is a fixed token budget: not computed with arithmetic, ``len``/``shape``/
        ``size``, nor a context size, nor None."""
        for node in ctx.get(Assignments).derivation(value):
            if isinstance(node, (cst.BinaryOperation, cst.IfExp, cst.BooleanOperation)):
                return False
            if isinstance(node, cst.Attribute) and node.attr.value in _CONTEXT_ATTRS | {"shape"}:
                return False
            if isinstance(node, cst.Call):
                func = node.func
                name = func.attr.value if isinstance(func, cst.Attribute) else getattr(func, "value", "")
                if name in ("len", "size", "numel", "max", "min"):
                    return False
            if isinstance(node, cst.Name) and node.value == "None":
                return False
        return True

    @staticmethod
    def _report(ctx: Context, kinds: frozenset, node: cst.CSTNode, shown: str, value: str,
                keyword: Optional[cst.Name]) -> Diagnostic:
        version = ctx.target_version("transformers")
        model = sorted(kinds)[0].rsplit(".", 1)[-1]
        if version is not None and version >= _RAISES:
            consequence = (f"and a prompt of {value} tokens or more makes `generate()` raise \"Input length of "
                           f"input_ids is ..., but `max_length` is set to {value}\" (with "
                           f"{ctx.version_fact('transformers')})")
        else:
            consequence = (f"and a prompt of {value} tokens or more leaves no room: with "
                           f"{ctx.version_fact('transformers')} `generate()` only logs \"Input length of "
                           f"input_ids is ...\" (4.46 and later raise ValueError)")
        message = (f"{shown} counts the prompt tokens: for the decoder-only `{model}` it bounds prompt plus "
                   f"answer, so each prompt token is one new token less, {consequence}")
        fix: Optional[Fix] = None
        if keyword is not None:
            fix = ctx.fix("Use `max_new_tokens` instead of `max_length`", Applicability.UNSAFE,
                          ctx.replace(keyword, "max_new_tokens"))
        return ctx.report(node, message, fix=fix,
                          help="Use `max_new_tokens=` (the number of tokens to generate after the prompt)")
