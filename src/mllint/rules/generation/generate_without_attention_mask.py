from __future__ import annotations

from typing import Iterator, Optional

import libcst as cst
from packaging.version import Version

from mllint.analysis.batches import Batches, Origin, Provenance, encoding_key, strip_moves
from mllint.analysis.hf import DECODER_ONLY, ENCODER_DECODER, families, is_hf_model
from mllint.analysis.instances import Instances
from mllint.analysis.names import dotted
from mllint.analysis.signatures import GENERATE, TOKENIZER_CALL, bind
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Fix, Severity
from mllint.core.rule import Invalid, Rule, Valid

# transformers 5.2.0 stopped inferring the mask for encoder-decoder models (5.1.0 still did).
_NO_ENC_DEC_INFERENCE = Version("5.2")
# Tokenizer methods whose BatchEncoding holds an ``attention_mask`` next to ``input_ids``.
_MASKING_METHODS = ("__call__", "batch_encode_plus", "encode_plus", "pad")


class GenerateWithoutAttentionMask(Rule):
    """## What it does
    Checks for a Hugging Face `generate()` call whose token ids come from a padded batch (a
    tokenizer called on several texts with `padding=` on, `tokenizer.pad(...)`, or a batch of a
    data loader, a collator or a Lightning `*_step` hook) and that passes no `attention_mask`.

    The receiver must be a Hugging Face model the module loads (`from_pretrained`, `from_config`,
    `get_peft_model`, `self.model` set in `__init__`); a home-grown `generate`, vLLM's
    `LLM.generate` or a model of unknown origin is left alone. Calls with `**inputs` (a
    `BatchEncoding` carries its mask) or any other `**kwargs` splat are left alone, and so are
    single-sequence calls (a tokenizer called on one prompt, `for prompt in prompts:` loops),
    which have no padding to hide.

    ## Why is this bad?
    Without a mask, `generate()` has to guess which positions are padding.
    `GenerationMixin._prepare_attention_mask_for_generation` (transformers
    `generation/utils.py`, the same in 4.30 to 5.23) infers it as `input_ids != pad_token_id`
    only when the pad id occurs in the input *and differs from every EOS id*; otherwise the mask
    is all ones. Many decoder-only models have no pad id (`GPT2Config`, `LlamaConfig` and
    `MistralConfig` default to `pad_token_id=None`), so it falls back to EOS
    (`_prepare_special_tokens`), and `tokenizer.pad_token = tokenizer.eos_token` makes the two
    equal as well: the model then attends to the padding, and the continuation of every padded
    row is conditioned on pad tokens. transformers only logs "The attention mask is not set and
    cannot be inferred from input because pad token is same as eos token".

    Encoder-decoder models are worse off since transformers 5.2: `generate()` infers the mask
    only `if not kwargs_has_attention_mask and not self.config.is_encoder_decoder` (5.2.0 to
    5.23.0), so a T5 or BART encoder always attends to its padding; for them the finding is an
    error. Up to 5.1 it inferred the mask for them too (`requires_attention_mask`: 4.57.6, 5.0.0,
    5.1.0), and their pad and EOS ids differ (T5 0/1, BART 1/2), so encoder-decoder calls are
    not reported when the target transformers version is older than 5.2.

    ## Example
    ```python
    inputs = tokenizer(prompts, padding=True, return_tensors="pt").to(device)
    outputs = model.generate(inputs.input_ids, max_new_tokens=64)
    ```

    ## Use instead
    ```python
    inputs = tokenizer(prompts, padding=True, return_tensors="pt").to(device)
    outputs = model.generate(inputs.input_ids, attention_mask=inputs.attention_mask, max_new_tokens=64)
    ```
    or `model.generate(**inputs, max_new_tokens=64)`.

    ## Fix safety
    When the ids are read straight from a tokenizer's `BatchEncoding` variable (`enc.input_ids`,
    `enc["input_ids"].to(device)`), the fix passes that encoding's own mask, spelled the same way
    and with the same device transfer: `attention_mask=enc.attention_mask`. It is safe in the
    sense of ruff (and of `Applicability.SAFE`): it keeps the program's meaning apart from the bug
    it removes. The mask was made by the same tokenizer call for exactly these ids, so rows
    without padding see the same input as before, and padded rows stop attending to their
    padding, which is what the call meant. The fix is not offered when that call passes
    `return_attention_mask=` other than `True` or `**kwargs`, when the ids went through another
    variable, when positional arguments follow them, or
    for data-loader batches, where a custom collate function may not produce a mask (the
    suggestion `attention_mask=batch["attention_mask"]` is only displayed).

    ## References
    - transformers `generation/utils.py`, `GenerationMixin.generate` and
      `_prepare_attention_mask_for_generation`
    - transformers `generation/utils.py`, `GenerationMixin._prepare_special_tokens` (the warnings)
    - https://huggingface.co/docs/transformers/llm_tutorial#wrong-padding-side
    """

    code = "MLL202"
    name = "generate-without-attention-mask"
    summary = "`generate()` on a padded batch without its `attention_mask`"
    severity = Severity.WARNING
    tags = ("correctness", "transformers", "generation")
    triggers = (("generate",), ("padding", ".pad(", "oader", "OADER", "_step", "compute_loss", "DataCollator"))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (
        ("import:transformers", "import:peft"),
        ("call:generate",),
    )
    premise = {"transformers": ">=4.0"}
    VALID = (
        # transformers 5.1 still inferred the mask for encoder-decoder models (T5 pad 0 != EOS 1).
        Valid("""
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
            tok = AutoTokenizer.from_pretrained("google/flan-t5-base")
            model = AutoModelForSeq2SeqLM.from_pretrained("google/flan-t5-base")
            batch = tok(["summarize: a", "summarize: bb"], padding=True, return_tensors="pt")
            out = model.generate(batch["input_ids"], max_new_tokens=32)
            """, settings={"target_versions": {"transformers": "5.1.0"}}),
        # The whole BatchEncoding, mask included.
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("gpt2", padding_side="left")
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            inputs = tokenizer(["a", "bb"], padding=True, return_tensors="pt")
            out = model.generate(**inputs, max_new_tokens=20)
            """),
        # The mask passed explicitly.
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            enc = tokenizer(prompts, padding=True, return_tensors="pt")
            out = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"])
            """),
        # Single-prompt inference (peft's peft_adalora_seq2seq.py shape): nothing is padded.
        Valid("""
            from transformers import AutoModelForSeq2SeqLM
            model = AutoModelForSeq2SeqLM.from_pretrained("t5-base")
            inputs = tokenizer("translate: I love you", return_tensors="pt")
            outputs = model.generate(input_ids=inputs["input_ids"], max_new_tokens=10)
            """),
        # One prompt at a time.
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            for prompt in prompts:
                ids = tokenizer(prompt, padding=True, return_tensors="pt").input_ids
                print(model.generate(ids))
            """),
        # A home-grown GPT with its own generate().
        Valid("""
            class GPT:
                def generate(self, idx, max_new_tokens): ...
            model = GPT()
            for batch in loader:
                model.generate(batch["input_ids"], 100)
            """),
        # vLLM takes prompts, not padded ids.
        Valid("""
            from vllm import LLM
            llm = LLM(model="m")
            batch = tokenizer(prompts, padding=True)
            llm.generate(batch["input_ids"])
            """),
        # Lightning validation step passing the batch's mask.
        Valid("""
            import lightning as L
            from transformers import T5ForConditionalGeneration
            class Summarizer(L.LightningModule):
                def __init__(self):
                    super().__init__()
                    self.model = T5ForConditionalGeneration.from_pretrained("t5-small")
                def validation_step(self, batch, batch_idx):
                    return self.model.generate(batch["input_ids"], attention_mask=batch["attention_mask"])
            """),
        # Other keyword arguments arrive through **kwargs: they may hold the mask.
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            enc = tokenizer(prompts, padding=True, return_tensors="pt")
            out = model.generate(enc.input_ids, **gen_kwargs)
            """),
        # Encoder-decoder on transformers 4.x: the mask is inferred from T5's pad id (0 != EOS 1).
        Valid("""
            from transformers import T5ForConditionalGeneration
            model = T5ForConditionalGeneration.from_pretrained("t5-small")
            enc = tokenizer(texts, padding="longest", return_tensors="pt")
            out = model.generate(enc.input_ids)
            """, settings={"target_versions": {"transformers": "4.57.6"}}),
        # Images in a batch need no mask.
        Valid("""
            from transformers import VisionEncoderDecoderModel
            model = VisionEncoderDecoderModel.from_pretrained("microsoft/trocr-base-handwritten")
            for batch in test_dataloader:
                ids = model.generate(batch["pixel_values"].to(device))
            """),
        # The receiver's origin is unknown.
        Valid("""
            def evaluate(model, tokenizer, texts):
                enc = tokenizer(texts, padding=True, return_tensors="pt")
                return model.generate(enc.input_ids)
            """),
    )
    INVALID = (
        Invalid(
            """
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("mistralai/Mistral-7B-v0.1", padding_side="left")
            tokenizer.pad_token = tokenizer.eos_token
            model = AutoModelForCausalLM.from_pretrained("mistralai/Mistral-7B-v0.1")
            inputs = tokenizer(prompts, padding=True, return_tensors="pt").to("cuda")
            out = model.generate(inputs.input_ids, max_new_tokens=64)
            """,
            line=6,
            message="`pad_token = eos_token` is common",
            fix="""
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("mistralai/Mistral-7B-v0.1", padding_side="left")
            tokenizer.pad_token = tokenizer.eos_token
            model = AutoModelForCausalLM.from_pretrained("mistralai/Mistral-7B-v0.1")
            inputs = tokenizer(prompts, padding=True, return_tensors="pt").to("cuda")
            out = model.generate(inputs.input_ids, attention_mask=inputs.attention_mask, max_new_tokens=64)
            """,
            applicability=Applicability.SAFE,
        ),
        # Subscript spelling and a device move on the ids: the mask gets the same.
        Invalid(
            """
            from transformers import AutoModelForSeq2SeqLM
            model = AutoModelForSeq2SeqLM.from_pretrained("google/flan-t5-base").to(dev)
            batch = tokenizer(["summarize: a", "summarize: bb"], padding="longest", return_tensors="pt")
            ids = model.generate(input_ids=batch['input_ids'].to(dev))
            """,
            line=4,
            message="never infers the mask for encoder-decoder models (since 5.2)",
            severity=Severity.ERROR,
            fix="""
            from transformers import AutoModelForSeq2SeqLM
            model = AutoModelForSeq2SeqLM.from_pretrained("google/flan-t5-base").to(dev)
            batch = tokenizer(["summarize: a", "summarize: bb"], padding="longest", return_tensors="pt")
            ids = model.generate(input_ids=batch['input_ids'].to(dev), attention_mask=batch['attention_mask'].to(dev))
            """,
            applicability=Applicability.SAFE,
        ),
        # Field report (a): T5 in Lightning; the batch comes from the data loader.
        Invalid(
            """
            import lightning as L
            from transformers import T5ForConditionalGeneration
            class Summarizer(L.LightningModule):
                def __init__(self):
                    super().__init__()
                    self.model = T5ForConditionalGeneration.from_pretrained("t5-small")
                def validation_step(self, batch, batch_idx):
                    preds = self.model.generate(batch["input_ids"], max_new_tokens=64)
                    return preds
            """,
            line=8,
            message="collated data-loader batch",
            applicability=Applicability.DISPLAY_ONLY,
            severity=Severity.ERROR,
            settings={"target_versions": {"transformers": "5.23.0"}},
        ),
        # The ids went through another variable: reported, not fixed.
        Invalid(
            """
            from transformers import AutoModelForCausalLM
            from peft import get_peft_model
            model = get_peft_model(AutoModelForCausalLM.from_pretrained("gpt2"), config)
            input_ids = tokenizer(questions, padding=True, return_tensors="pt").input_ids
            outputs = model.generate(input_ids=input_ids)
            """,
            line=5,
            message="`input_ids`",
        ),
        # One argument per line: the mask gets its own line.
        Invalid(
            """
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            for start in range(0, len(texts), 8):
                enc = tokenizer(texts[start:start + 8], padding=True, return_tensors="pt")
                out = model.generate(
                    input_ids=enc.input_ids,
                    max_new_tokens=32,
                )
            """,
            line=5,
            fix="""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            for start in range(0, len(texts), 8):
                enc = tokenizer(texts[start:start + 8], padding=True, return_tensors="pt")
                out = model.generate(
                    input_ids=enc.input_ids,
                    attention_mask=enc.attention_mask,
                    max_new_tokens=32,
                )
            """,
            applicability=Applicability.SAFE,
        ),
        # The encoding has no mask to pass: reported, not fixed.
        Invalid(
            """
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            enc = tokenizer(texts, padding=True, return_attention_mask=False, return_tensors="pt")
            out = model.generate(enc.input_ids)
            """,
            line=4,
            fix="""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            enc = tokenizer(texts, padding=True, return_attention_mask=False, return_tensors="pt")
            out = model.generate(enc.input_ids)
            """,
        ),
        # generate() has no positional `attention_mask`: the second argument is `generation_config`.
        Invalid(
            """
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            enc = tokenizer(texts, padding=True, return_tensors="pt")
            out = model.generate(enc.input_ids, enc.attention_mask)
            """,
            line=4,
            fix="""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            enc = tokenizer(texts, padding=True, return_tensors="pt")
            out = model.generate(enc.input_ids, enc.attention_mask)
            """,
        ),
        # A padded chat template.
        Invalid(
            """
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")
            ids = tokenizer.apply_chat_template(conversations, padding=True, return_tensors="pt")
            out = model.generate(ids, max_new_tokens=128)
            """,
            line=4,
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        instances = ctx.get(Instances)
        version = ctx.target_version("transformers")
        for call in ctx.nodes(cst.Call):
            func = call.func
            if not (isinstance(func, cst.Attribute) and func.attr.value == "generate"):
                continue
            binding = bind(call, GENERATE)
            if binding.opaque or binding.passed("attention_mask"):
                continue
            kinds = instances.kinds(func.value, call)
            if not is_hf_model(kinds):
                continue
            found = ctx.get(Batches).generate_ids(binding)
            if found is None:
                continue
            arg, origin = found
            family = families(kinds)
            if family == {ENCODER_DECODER} and version is not None and version < _NO_ENC_DEC_INFERENCE:
                continue
            row = ctx.locator.location(ctx.span(origin.node)[0]).row if origin.node is not None else None
            where = f" (line {row})" if row is not None else ""
            mask = self._mask_text(ctx, arg.value, origin)
            yield ctx.report(
                call,
                f"`{ctx.code(arg.value)}` comes from {origin.provenance.value}{where}, but "
                f"`{ctx.code(func)}()` gets no `attention_mask`: {self._consequence(ctx, family)}",
                fix=self._fix(ctx, call, arg, origin, mask),
                help=self._help(arg.value, origin, mask),
                severity=Severity.ERROR if family == {ENCODER_DECODER} else None,
            )

    @staticmethod
    def _help(ids: cst.BaseExpression, origin: Origin, mask: Optional[str]) -> str:
        text = f"Pass `attention_mask={mask}`" if mask else "Pass the batch's `attention_mask`"
        if origin.provenance is Provenance.PADDED and isinstance(origin.encoding, cst.Name) \
                and strip_moves(ids) is ids:
            text += f", or the whole encoding: `generate(**{origin.encoding.value}, ...)`"
        return text

    @staticmethod
    def _consequence(ctx: Context, family) -> str:
        if family == {ENCODER_DECODER}:
            return (f"with {ctx.version_fact('transformers')}, `generate()` never infers the mask for "
                    "encoder-decoder models (since 5.2), so the encoder attends to the padding")
        text = ("`generate()` infers a mask only when the pad id occurs in the input and differs from "
                "EOS, but many decoder-only models have no pad id (it falls back to EOS) and "
                "`pad_token = eos_token` is common; then the model attends to the padding")
        if family != {DECODER_ONLY}:
            text += " (and since transformers 5.2 it never infers it for encoder-decoder models)"
        return text

    @staticmethod
    def _mask_text(ctx: Context, ids: cst.BaseExpression, origin: Origin) -> Optional[str]:
        """``ids`` with its ``input_ids`` key turned into ``attention_mask`` (same spelling, same
        device moves), when ``ids`` reads that key straight from the encoding."""
        key_node = strip_moves(ids)
        if encoding_key(key_node) != "input_ids" or origin.encoding is None:
            return None
        base = key_node.value  # type: ignore[attr-defined]
        if dotted(base) is None or ctx.code(base) != ctx.code(origin.encoding):
            return None
        text, key_text = ctx.code(ids), ctx.code(key_node)
        if not text.startswith(key_text):
            return None
        if isinstance(key_node, cst.Attribute):
            mask = f"{ctx.code(base)}.attention_mask"
        else:
            quoted = ctx.code(key_node.slice[0].slice.value)  # type: ignore[attr-defined]
            mask = f"{ctx.code(base)}[{quoted.replace('input_ids', 'attention_mask')}]"
        return mask + text[len(key_text):]

    @staticmethod
    def _fix(ctx: Context, call: cst.Call, arg: cst.Arg, origin: Origin, mask: Optional[str]) -> Optional[Fix]:
        following = call.args[call.args.index(arg) + 1:]
        if mask is None or any(a.keyword is None for a in following):
            return None
        at = ctx.span(arg.value)[1]
        edit = ctx.edit(at, at, f", attention_mask={mask}")
        if following:  # one argument per line: the mask gets its own line too
            start = ctx.span(following[0].keyword)[0]  # type: ignore[arg-type]
            between = ctx.source[at:start]
            if "\n" in between:
                edit = ctx.edit(start, start, f"attention_mask={mask},{between.split(',', 1)[1]}")
        message = f"Pass `attention_mask={mask}`"
        if origin.provenance is Provenance.LOADER:
            return ctx.fix(message, Applicability.DISPLAY_ONLY, edit)
        tokenizer_call = origin.node
        if not isinstance(tokenizer_call, cst.Call) or not isinstance(origin.encoding, cst.Name):
            return None
        found = ctx.get(Batches).tokenizer_call(tokenizer_call)
        if found is None or found[1] not in _MASKING_METHODS:
            return None
        options = bind(tokenizer_call, TOKENIZER_CALL)
        returned = options.value("return_attention_mask")
        if options.opaque or (returned is not None and not (isinstance(returned, cst.Name)
                                                            and returned.value == "True")):
            return None
        return ctx.fix(message, Applicability.SAFE, edit)
