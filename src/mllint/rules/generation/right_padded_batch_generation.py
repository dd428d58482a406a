from __future__ import annotations

from typing import Iterator, List, Optional

import libcst as cst

from mllint.analysis.batches import Batches, Provenance
from mllint.analysis.hf import DECODER_ONLY, families, is_hf_model
from mllint.analysis.instances import Instances
from mllint.analysis.names import dotted
from mllint.analysis.padding import PER_CALL_METHODS, PER_CALL_SINCE, PaddingSides, Side, SideSource
from mllint.analysis.signatures import GENERATE, bind
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Edit, Fix, Severity
from mllint.core.rule import Invalid, Option, Rule, Valid


def _trains(ctx: Context) -> bool:
    """The module trains something: a backward pass, a Trainer, a collator, a Lightning step."""
    for call in ctx.nodes(cst.Call):
        if isinstance(call.func, cst.Attribute) and call.func.attr.value == "backward":
            return True
        for name in ctx.names.resolve(call.func):
            last = name.rsplit(".", 1)[-1]
            if name.startswith(("transformers.", "trl.", "lightning.")) and (
                    last.endswith("Trainer") or last.startswith("DataCollator")):
                return True
    return any(f.name.value == "training_step" for f in ctx.nodes(cst.FunctionDef))


class RightPaddedBatchGeneration(Rule):
    """## What it does
    Checks for batched `generate()` of a decoder-only Hugging Face model (`AutoModelForCausalLM`,
    `*ForCausalLM`, `*LMHeadModel`, also behind `get_peft_model`/`PeftModel`) whose input ids come
    from a tokenizer call that pads several prompts (`tok(prompts, padding=True)`,
    `tok.pad(...)`, `apply_chat_template(..., padding=True)`) while the tokenizer pads on the
    right: the call passes `padding_side="right"`, or the last `tok.padding_side = "right"` /
    `from_pretrained(..., padding_side="right")` before the call, in the same function, says so
    (or every setting in the file is "right"). The ids can be passed as `inputs`, `input_ids=`
    or `**encoding`, through locals and `.to(device)`. A `padding_side="left"` given to
    `apply_chat_template` itself does not count: it goes to the chat template, not to the
    tokenizer (use `tokenizer_kwargs={"padding_side": "left"}`), and the message says so.

    When nothing in the file sets the side, the checkpoint decides (see below) and the rule stays
    silent unless the `assume-default-right` option is on (and then only for a tokenizer loaded
    in view with `from_pretrained` and no `**` options). A `"left"` setting anywhere in the file
    that may run before the call (in another function, through another name) also keeps it
    silent. Collated data-loader batches (their collator's tokenizer is rarely in view), single
    prompts and hand-built (e.g. manually left-padded or `.flip(1)`-ed) ids are left alone.

    ## Why is this bad?
    A decoder-only model continues the input tensor: every generation step appends one token
    after the last column and takes the next-token logits at the last position
    (`generation/utils.py`: `outputs.logits[:, -1, :]` in `GenerationMixin._sample` of 4.57.6
    and 5.23.0, in `greedy_search`/`sample` of 4.30.0). With right padding, the last column of
    every shorter prompt is a pad token, so its first new token is predicted from a pad
    position and the continuation follows the pad run instead of the prompt: outputs of the
    shorter prompts degrade or turn to garbage, while the longest prompt looks fine. Encoder-decoder models (T5, BART) are not affected: the encoder
    reads the whole padded input and the decoder starts from its own start token.

    `generate()` only logs a warning ("A decoder-only architecture is being used, but
    right-padding was detected!", `GenerationMixin.generate`, 4.30.0 to 5.23.0), and only for
    batch size > 1 with a pad token id: up to 4.57.6 it checks whether any last token *equals*
    the pad id (so it also fires falsely when pad = EOS and a prompt ends in EOS), 5.23.0 checks
    the attention mask's last column when a mask is passed.

    The side is a property of the tokenizer object (`tokenization_utils_base.py`,
    `PreTrainedTokenizerBase`): the class default is `"right"`, but the Llama, CodeLlama, Gemma,
    Cohere and XLNet tokenizer classes default to `"left"`, and a checkpoint's
    `tokenizer_config.json` can set either. That is why a tokenizer loaded without any setting
    is only reported with `assume-default-right = true`. Training collators usually pad on the
    right on purpose, so a script that trains with a right-padded tokenizer and then generates
    from the same tokenizer is the typical case.

    ## Example
    ```python
    tokenizer = AutoTokenizer.from_pretrained("gpt2")
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained("gpt2")
    inputs = tokenizer(prompts, padding=True, return_tensors="pt")
    outputs = model.generate(**inputs, max_new_tokens=32)
    ```

    ## Use instead
    ```python
    inputs = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
    outputs = model.generate(**inputs, max_new_tokens=32)
    ```
    or, before transformers 4.45 (which added the per-call argument; 4.44 fast tokenizers
    reject it with a `TypeError`, slow ones ignore it), `tokenizer.padding_side = "left"` before
    the call.

    ## Fix safety
    Every fix changes the generated text (that is its purpose) and is unsafe. When the call
    passes `padding_side="right"`, the fix sets it to `"left"`. When the target transformers
    version is known to be >= 4.45 and the call is `__call__`, `encode_plus`, `batch_encode_plus`
    or `pad`, the fix adds `padding_side="left"` to that call: it affects this call only. Otherwise
    the fix inserts `tok.padding_side = "left"` before the statement with the tokenizer call,
    which changes the tokenizer for the rest of the program: when the file also trains (a
    `backward()`, a Trainer, a data collator, a Lightning `training_step`), later training
    batches would be padded on the left too, so the fix is then only displayed (as the per-call
    argument when the method takes it). The fix does not touch code that strips the prompt from
    the output: slicing by the padded width (`out[:, inputs.input_ids.shape[1]:]`) stays right.

    ## References
    - transformers `generation/utils.py`, `GenerationMixin.generate` (right-padding warning) and `_sample`
    - transformers `tokenization_utils_base.py`, `PreTrainedTokenizerBase.__init__` and `__call__` (`padding_side`)
    - https://huggingface.co/docs/transformers/llm_tutorial#wrong-padding-side
    - https://github.com/huggingface/transformers/issues/18388
    """

    code = "MLL203"
    name = "generate-right-padded-decoder-only-batch"
    summary = "batched `generate()` of a decoder-only model on prompts padded on the right"
    severity = Severity.WARNING
    tags = ("correctness", "transformers", "generation")
    triggers = (("generate",), ("padding", ".pad("), ("ForCausalLM", "LMHeadModel"))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (
        ("import:transformers", "import:peft"),
        ("call:generate",),
        ("name:*ForCausalLM", "name:*LMHeadModel"),
    )
    premise = {"transformers": ">=4.30"}
    options = (
        Option("assume-default-right", False,
               "also report tokenizers loaded without any padding_side setting in the file "
               "(right is the class default, but Llama/Gemma tokenizers and many checkpoints pad left)"),
    )
    VALID = (
        # Left padding for generation.
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("gpt2", padding_side="left")
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            inputs = tokenizer(["a", "bb"], padding=True, return_tensors="pt")
            model.generate(**inputs)
            """),
        # Trained on the right, switched to the left before generating.
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("m")
            tokenizer.padding_side = "right"
            model = AutoModelForCausalLM.from_pretrained("m")
            tokenizer.padding_side = "left"
            batch = tokenizer(prompts, padding=True, return_tensors="pt").to(model.device)
            out = model.generate(batch.input_ids, attention_mask=batch.attention_mask)
            """),
        # Per-call override (transformers >= 4.45).
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("m", padding_side="right")
            model = AutoModelForCausalLM.from_pretrained("m")
            batch = tokenizer.pad(features, padding_side="left", return_tensors="pt")
            model.generate(**batch)
            """),
        # apply_chat_template with the side in tokenizer_kwargs.
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("m", padding_side="right")
            model = AutoModelForCausalLM.from_pretrained("m")
            enc = tokenizer.apply_chat_template(chats, padding=True, return_dict=True, return_tensors="pt",
                                                tokenizer_kwargs={"padding_side": "left"})
            model.generate(**enc)
            """),
        # Batch size 1: one prompt, nothing is padded.
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("m", padding_side="right")
            model = AutoModelForCausalLM.from_pretrained("m")
            for prompt in prompts:
                inputs = tokenizer(prompt, padding=True, return_tensors="pt")
                model.generate(**inputs)
            """),
        # Manually left-padded ids (RLHF-style flip): not a tokenizer's padding.
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("m", padding_side="right")
            model = AutoModelForCausalLM.from_pretrained("m")
            enc = tokenizer(prompts, padding=True, return_tensors="pt")
            ids = enc.input_ids.flip(1)
            model.generate(ids, attention_mask=enc.attention_mask.flip(1))
            """),
        # Encoder-decoder: right padding of the encoder input is the normal layout.
        Valid("""
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("t5-small", padding_side="right")
            model = AutoModelForSeq2SeqLM.from_pretrained("t5-small")
            model.generate(**tokenizer(texts, padding=True, return_tensors="pt"))
            """),
        # Nothing in the file sets the side: the checkpoint decides (option off by default).
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("mistralai/Mistral-7B-Instruct-v0.2")
            model = AutoModelForCausalLM.from_pretrained("mistralai/Mistral-7B-Instruct-v0.2")
            model.generate(**tokenizer(prompts, padding=True, return_tensors="pt"))
            """),
        # A left setting through an alias elsewhere may run first: cannot order it, stay silent.
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("m", padding_side="right")
            model = AutoModelForCausalLM.from_pretrained("m")
            def prepare(tok):
                tok.padding_side = "left"
            def run(prompts):
                model.generate(**tokenizer(prompts, padding=True, return_tensors="pt"))
            """),
        # A collated data-loader batch: its tokenizer side is out of view.
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("m")
            tokenizer.padding_side = "right"
            for batch in eval_dataloader:
                model.generate(**batch)
            """),
        # A home-grown model with its own generate.
        Valid("""
            tokenizer.padding_side = "right"
            model = GPT(config)
            model.generate(**tokenizer(prompts, padding=True, return_tensors="pt"))
            """),
    )
    INVALID = (
        Invalid(
            """
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("gpt2")
            tokenizer.pad_token = tokenizer.eos_token
            tokenizer.padding_side = "right"
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            inputs = tokenizer(prompts, padding=True, return_tensors="pt")
            outputs = model.generate(**inputs, max_new_tokens=32)
            """,
            line=7,
            message='`tokenizer.padding_side = "right"` (line 4)',
            fix="""
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("gpt2")
            tokenizer.pad_token = tokenizer.eos_token
            tokenizer.padding_side = "right"
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            tokenizer.padding_side = "left"
            inputs = tokenizer(prompts, padding=True, return_tensors="pt")
            outputs = model.generate(**inputs, max_new_tokens=32)
            """,
            applicability=Applicability.UNSAFE,
        ),
        # Per-call argument when the target version takes it.
        Invalid(
            """
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tok = AutoTokenizer.from_pretrained("m", padding_side="right")
            model = AutoModelForCausalLM.from_pretrained("m").to("cuda")
            enc = tok(
                ["a", "bb"],
                padding="longest",
            ).to("cuda")
            model.generate(enc["input_ids"], attention_mask=enc["attention_mask"])
            """,
            line=8,
            message="`tok` pads on the right (line 4",
            fix="""
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tok = AutoTokenizer.from_pretrained("m", padding_side="right")
            model = AutoModelForCausalLM.from_pretrained("m").to("cuda")
            enc = tok(
                ["a", "bb"],
                padding="longest", padding_side="left",
            ).to("cuda")
            model.generate(enc["input_ids"], attention_mask=enc["attention_mask"])
            """,
            applicability=Applicability.UNSAFE,
            settings={"target_versions": {"transformers": "4.57.6"}},
        ),
        # An explicit per-call "right".
        Invalid(
            """
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("m")
            batch = tokenizer.pad(features, padding_side="right", return_tensors="pt")
            model.generate(**batch)
            """,
            line=4,
            message='`padding_side="right"` in the call',
            fix="""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("m")
            batch = tokenizer.pad(features, padding_side="left", return_tensors="pt")
            model.generate(**batch)
            """,
            applicability=Applicability.UNSAFE,
        ),
        # SFT script: right padding for training, then batched evaluation with the same tokenizer.
        Invalid(
            """
            from peft import get_peft_model
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from trl import SFTTrainer
            tokenizer = AutoTokenizer.from_pretrained(base)
            tokenizer.padding_side = "right"  # fp16 overflow otherwise
            model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora_config)
            trainer = SFTTrainer(model=model, train_dataset=ds, processing_class=tokenizer)
            trainer.train()
            def evaluate(questions):
                inputs = tokenizer(questions, padding=True, return_tensors="pt").to("cuda")
                return model.generate(**inputs, max_new_tokens=64)
            """,
            line=11,
            message="line 5",
            applicability=Applicability.DISPLAY_ONLY,
        ),
        # Nothing sets the side, and the user says their tokenizers default to the right.
        Invalid(
            """
            from transformers import AutoTokenizer, GPT2LMHeadModel
            tokenizer = AutoTokenizer.from_pretrained("gpt2")
            model = GPT2LMHeadModel.from_pretrained("gpt2")
            model.generate(**tokenizer(["a", "bb"], padding=True, return_tensors="pt"))
            """,
            line=4,
            message="nothing in this file sets `tokenizer.padding_side`",
            settings={"rule_options": {"MLL203": {"assume-default-right": True}}},
        ),
        # apply_chat_template hands its own padding_side= to the chat template.
        Invalid(
            """
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("m", padding_side="right")
            model = AutoModelForCausalLM.from_pretrained("m")
            enc = tokenizer.apply_chat_template(chats, padding=True, padding_side="left", return_dict=True,
                                                return_tensors="pt")
            model.generate(**enc)
            """,
            line=6,
            message='use `tokenizer_kwargs={"padding_side": "left"}`',
            fix="""
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("m", padding_side="right")
            model = AutoModelForCausalLM.from_pretrained("m")
            tokenizer.padding_side = "left"
            enc = tokenizer.apply_chat_template(chats, padding=True, padding_side="left", return_dict=True,
                                                return_tensors="pt")
            model.generate(**enc)
            """,
            applicability=Applicability.UNSAFE,
        ),
        # Lightning module: the tokenizer made in __init__, right-padded for training.
        Invalid(
            """
            import lightning as L
            from transformers import AutoModelForCausalLM, AutoTokenizer
            class LitLM(L.LightningModule):
                def __init__(self, name):
                    super().__init__()
                    self.model = AutoModelForCausalLM.from_pretrained(name)
                    self.tokenizer = AutoTokenizer.from_pretrained(name, padding_side="right")
                def sample(self, prompts):
                    enc = self.tokenizer(prompts, padding=True, return_tensors="pt")
                    return self.model.generate(enc.input_ids, attention_mask=enc.attention_mask)
            """,
            line=10,
            message="`self.tokenizer`",
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        instances = ctx.get(Instances)
        batches = ctx.get(Batches)
        sides = ctx.get(PaddingSides)
        for call in ctx.nodes(cst.Call):
            func = call.func
            if not (isinstance(func, cst.Attribute) and func.attr.value == "generate"):
                continue
            kinds = instances.kinds(func.value, call)
            if not is_hf_model(kinds) or families(kinds) != {DECODER_ONLY}:
                continue
            for arg in self._id_arguments(call):
                origin = batches.origin(arg.value)
                if origin.provenance is not Provenance.PADDED or origin.tokenizer is None \
                        or not isinstance(origin.node, cst.Call):
                    continue
                side = sides.at(origin.node, origin.tokenizer)
                default = side.source is SideSource.DEFAULT and self.config["assume-default-right"]
                if side.value != "right" and not default:
                    continue
                yield self._report(ctx, call, arg, origin.node, origin.tokenizer, side, sorted(kinds)[0])
                break

    @staticmethod
    def _id_arguments(call: cst.Call) -> List[cst.Arg]:
        binding = bind(call, GENERATE)
        named = [binding.arg(name) for name in ("inputs", "input_ids")]
        return [a for a in named if a is not None] + [a for a in call.args if a.star == "**"]

    def _report(self, ctx: Context, call: cst.Call, arg: cst.Arg, tok_call: cst.Call,
                tokenizer: cst.BaseExpression, side: Side, kind: str) -> Diagnostic:
        tok = ctx.code(tokenizer)
        model = kind.rsplit(".", 1)[-1]
        row = ctx.locator.location(ctx.span(tok_call)[0]).row
        if side.source is SideSource.DEFAULT:
            why = (f"nothing in this file sets `{tok}.padding_side`, and the default is \"right\" for most "
                   f"tokenizers (unless the checkpoint's tokenizer_config.json says \"left\")")
        elif side.source is SideSource.CALL:
            why = '`padding_side="right"` in the call'
        else:
            shown = ctx.code(side.node).strip() if isinstance(side.node, cst.Assign) else \
                f"padding_side={ctx.code(side.node.value)}"  # type: ignore[union-attr]
            where = ctx.locator.location(ctx.span(side.node)[0]).row  # type: ignore[arg-type]
            why = f"`{shown}` (line {where})"
        ignored = ""
        if isinstance(tok_call.func, cst.Attribute) and tok_call.func.attr.value == "apply_chat_template" \
                and any(a.keyword is not None and a.keyword.value == "padding_side" for a in tok_call.args):
            ignored = (" (`apply_chat_template` passes its `padding_side=` to the chat template, not to the "
                       "tokenizer: use `tokenizer_kwargs={\"padding_side\": \"left\"}`)")
        return ctx.report(
            arg,
            f"batched `generate()` of decoder-only `{model}` on prompts that `{tok}` pads on the right "
            f"(line {row}; {why}){ignored}: the shorter prompts end in pad tokens, so their first new token "
            f"is predicted from a pad position and the output continues after the padding",
            fix=self._fix(ctx, tok_call, tokenizer, side),
            help=(f"Pad generation prompts on the left: `padding_side=\"left\"` in this call "
                  f"(transformers >= 4.45) or `{tok}.padding_side = \"left\"` before it"),
        )

    # -- fix -----------------------------------------------------------------------------------
    def _fix(self, ctx: Context, tok_call: cst.Call, tokenizer: cst.BaseExpression,
             side: Side) -> Optional[Fix]:
        left = '"left"'
        if side.source is SideSource.CALL and isinstance(side.node, (cst.Arg, cst.DictElement)):
            return ctx.fix("Pad on the left", Applicability.UNSAFE, ctx.replace(side.node.value, left))
        found = ctx.get(Batches).tokenizer_call(tok_call)
        per_call = found is not None and found[1] in PER_CALL_METHODS and tok_call.args \
            and not any(a.star for a in tok_call.args)
        version = ctx.target_version("transformers")
        if version is not None and version.release < PER_CALL_SINCE:
            per_call = False
        if per_call:
            end = ctx.span(tok_call.args[-1].value)[1]
            argument = ctx.edit(end, end, f", padding_side={left}")
            if ctx.version_source("transformers") is not None:  # known, not assumed
                return ctx.fix("Pass `padding_side=\"left\"` to the tokenizer call", Applicability.UNSAFE, argument)
        statement = ctx.enclosing(tok_call, cst.SimpleStatementLine)
        path = dotted(tokenizer)
        insertion: Optional[Edit] = None
        if statement is not None and path is not None:
            start = ctx.span(statement)[0]
            line = ctx.locator.line(ctx.locator.location(start).row)
            indent = line[: len(line) - len(line.lstrip())]
            insertion = ctx.edit(start, start, f"{path}.padding_side = {left}{ctx.locator.newline()}{indent}")
        if insertion is not None and not _trains(ctx):
            return ctx.fix(f"Set `{path}.padding_side = \"left\"` before the call", Applicability.UNSAFE, insertion)
        if per_call:
            return ctx.fix("Pass `padding_side=\"left\"` to the tokenizer call (transformers >= 4.45; the "
                           "tokenizer is also used for training)", Applicability.DISPLAY_ONLY, argument)
        if insertion is not None:
            return ctx.fix(f"Set `{path}.padding_side = \"left\"` before the call (and back for training)",
                           Applicability.DISPLAY_ONLY, insertion)
        return None
