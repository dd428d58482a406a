from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

import libcst as cst

from mllint.analysis.batches import Batches, Origin, Provenance, strip_moves, subscript_key
from mllint.analysis.dataflow import Assignments
from mllint.analysis.hf import COMPLETION_ONLY, DCLM, DECODER_ONLY, ENCODER_DECODER, families, is_hf_model
from mllint.analysis.instances import Instances
from mllint.analysis.names import dotted
from mllint.analysis.signatures import CALLS, GENERATE, bind
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Fix, Severity
from mllint.core.rule import Invalid, Rule, Valid

SEQ2SEQ = "transformers.DataCollatorForSeq2Seq"
DATALOADER = "torch.utils.data.DataLoader"
# What a collator puts in the batch that matters to generate().
DECODER_INPUTS = "decoder_input_ids"  # DataCollatorForSeq2Seq(model=...)
COPIED_IDS = "labels copied from input_ids"  # DataCollatorForLanguageModeling(mlm=False) and subclasses
OTHER = "other"
# Encoder-decoder models whose encoder input is not ``input_ids`` (speech, images).
_NON_TEXT_STEMS = ("Whisper", "Speech2Text", "SpeechEncoderDecoder", "VisionEncoderDecoder", "Pix2Struct",
                   "SeamlessM4T", "AutoModelForSpeechSeq2Seq")


@dataclass(frozen=True)
class _Evidence:
    node: cst.CSTNode
    text: str


def _strings(node: cst.BaseExpression) -> Optional[frozenset]:
    """``("a", "b")`` / ``["a"]`` / ``{"a"}`` / ``"a"`` -> the strings, else None."""
    if isinstance(node, cst.SimpleString) and isinstance(node.evaluated_value, str):
        return frozenset({node.evaluated_value})
    if isinstance(node, (cst.Tuple, cst.List, cst.Set)):
        out = set()
        for element in node.elements:
            inner = _strings(element.value)
            if inner is None:
                return None
            out |= inner
        return frozenset(out)
    return None


def _key_filter(test: cst.BaseExpression, key: str) -> Optional[Callable[[str], bool]]:
    """``k != "labels"``, ``k not in (...)``, ``k in (...)``, ``k == "x"`` -> which keys survive."""
    if not (isinstance(test, cst.Comparison) and len(test.comparisons) == 1
            and isinstance(test.left, cst.Name) and test.left.value == key):
        return None
    operator = test.comparisons[0].operator
    names = _strings(test.comparisons[0].comparator)
    if names is None:
        return None
    if isinstance(operator, (cst.NotEqual, cst.NotIn)):
        return lambda k: k not in names
    if isinstance(operator, (cst.Equal, cst.In)):
        return lambda k: k in names
    return None


def _filtered_source(comp: cst.DictComp) -> Optional[Tuple[cst.BaseExpression, List[Callable[[str], bool]]]]:
    """``{k: v.to(d) for k, v in batch.items() if k != "labels"}`` -> (``batch``, [filters])."""
    loop = comp.for_in
    if loop.inner_for_in is not None or not isinstance(comp.key, cst.Name):
        return None
    target = loop.target
    if not (isinstance(target, cst.Tuple) and len(target.elements) == 2
            and isinstance(target.elements[0].value, cst.Name)
            and target.elements[0].value.value == comp.key.value):
        return None
    source = loop.iter
    if not (isinstance(source, cst.Call) and isinstance(source.func, cst.Attribute)
            and source.func.attr.value == "items" and not source.args):
        return None
    filters = []
    for condition in loop.ifs:
        predicate = _key_filter(condition.test, comp.key.value)
        if predicate is None:
            return None
        filters.append(predicate)
    return source.func.value, filters


class GenerateWithTrainingBatch(Rule):
    """## What it does
    Checks for `generate()` of a Hugging Face model fed a whole training or validation batch
    (`model.generate(**batch)`: the `batch` of a Lightning `*_step` hook or of a Trainer
    `prediction_step`/`compute_loss` override, the loop variable over a `*loader*`/`DataLoader`,
    a collator's output) when the batch provably holds what generation must not see:

    - **encoder-decoder** models (T5, BART, Marian, ...): `decoder_input_ids`. Evidence: the
      batch's collator is `DataCollatorForSeq2Seq(..., model=...)` (traced through
      `DataLoader(collate_fn=...)`, or, when the loader is out of view, because every collator
      and data loader in the file is such a collator), or the function reads
      `batch["decoder_input_ids"]`;
    - **decoder-only** models (`*ForCausalLM`): `input_ids` that already contain the target
      tokens. Evidence: the same function computes a loss from the same batch
      (`self.model(**batch).loss`, `out = model(**batch)` then `out.loss`), or the collator is
      `DataCollatorForLanguageModeling(mlm=False)` / trl's `DataCollatorForCompletionOnlyLM`.
      Passing `input_ids=batch["input_ids"]` explicitly is reported too: it is the same input.

    Keys removed before the call (`{k: v for k, v in batch.items() if k not in (...)}`,
    `batch.pop("decoder_input_ids")`) count. Without such evidence (a batch of unknown origin,
    a `**kwargs` of unknown content, a home-grown `generate`) the rule stays silent; so it does
    for `predict_step` and `*predict*` loaders whose collator is out of view, since prediction
    data usually has a collator of its own.

    ## Why is this bad?
    `labels` in the batch are harmless: generation never forwards them to the model
    (transformers `generation/utils.py`, `GenerationMixin.prepare_inputs_for_generation`:
    `kwargs_to_avoid_forwarding = ("labels", ...)` in 5.23.0, `model_inputs.pop("labels", None)`
    in 4.57.6; in 4.30.0 the models' own `prepare_inputs_for_generation`, e.g. T5's and GPT-2's,
    build the model inputs without them). The hazards are what comes with them:

    - `DataCollatorForSeq2Seq(model=model)` adds `decoder_input_ids` made from the labels
      (`data/data_collator.py`, `prepare_decoder_input_ids_from_labels`, i.e. the labels shifted
      right behind the decoder start token, -100 replaced by the pad id). `generate()` takes a
      `decoder_input_ids` keyword as the decoder prompt
      (`GenerationMixin._prepare_decoder_input_ids_for_generation`, 4.30 to 5.23), so every
      output starts with the gold target and continues after it: validation metrics look
      near-perfect and mean nothing. transformers' own `Seq2SeqTrainer.prediction_step` removes
      `decoder_input_ids` before generating "otherwise, it would continue generating from the
      padded `decoder_input_ids`" (`trainer_seq2seq.py`, 4.30 to 5.23).
    - A causal-LM training batch holds prompt *and* answer in `input_ids`: its labels are aligned
      with `input_ids` (`loss/loss_utils.py`, `ForCausalLMLoss` of 4.46 to 5.23, and the
      models' own loss before it, shift the labels and flatten them against the logits of every
      input position; `DataCollatorForLanguageModeling` with `mlm=False` copies `input_ids`
      into `labels`). Generating from it continues after the gold
      answer, and right-padded rows continue after their padding.

    ## Example
    ```python
    collator = DataCollatorForSeq2Seq(tokenizer, model=model)

    class Summarizer(L.LightningModule):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.model(**batch).loss)
            preds = self.model.generate(**batch, max_new_tokens=64)
    ```

    ## Use instead
    ```python
            preds = self.model.generate(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=64
            )
    ```
    For a decoder-only model, generate from prompt-only inputs (the prompts tokenized without
    their answers, padded on the left), e.g. a separate evaluation dataset.

    ## Fix safety
    For text encoder-decoder models, the fix replaces `**batch` with
    `input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]` when neither is
    passed already and the call has no other `**` argument. It is unsafe: it changes the
    generated text (which is its purpose), drops every other key of the batch, and raises
    `KeyError` if the batch has no `attention_mask`. For speech and vision encoder-decoders
    (Whisper, VisionEncoderDecoder, ...) the encoder input has another name, and for decoder-only
    models the input ids themselves hold the answer, so there is no fix.

    ## References
    - transformers `generation/utils.py`, `GenerationMixin.prepare_inputs_for_generation` and `_prepare_decoder_input_ids_for_generation`
    - transformers `data/data_collator.py`, `DataCollatorForSeq2Seq.__call__` and `DataCollatorForLanguageModeling.torch_call`
    - transformers `trainer_seq2seq.py`, `Seq2SeqTrainer.prediction_step`
    - transformers `loss/loss_utils.py`, `ForCausalLMLoss`
    """

    code = "MLL204"
    name = "generate-with-training-batch"
    summary = "`generate()` fed a training batch that carries `decoder_input_ids` or the answers"
    severity = Severity.WARNING
    tags = ("correctness", "transformers", "generation")
    triggers = (("generate",), ("decoder_input_ids", "DataCollatorFor", "loss"))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (
        ("import:transformers", "import:peft"),
        ("call:generate",),
    )
    premise = {"transformers": ">=4.30"}
    VALID = (
        # A batch straight from the tokenizer.
        Valid("""
            from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq
            model = AutoModelForSeq2SeqLM.from_pretrained("t5-small")
            collator = DataCollatorForSeq2Seq(tokenizer, model=model)
            inputs = tokenizer(texts, padding=True, return_tensors="pt")
            model.generate(**inputs)
            """),
        # Only the encoder inputs of the training batch.
        Valid("""
            from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq
            model = AutoModelForSeq2SeqLM.from_pretrained("t5-small")
            collator = DataCollatorForSeq2Seq(tokenizer, model=model)
            for batch in eval_loader:
                model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            """),
        # Encoder-decoder, labels only: generate() ignores them.
        Valid("""
            import lightning as L
            from transformers import T5ForConditionalGeneration
            class Lit(L.LightningModule):
                def __init__(self):
                    self.model = T5ForConditionalGeneration.from_pretrained("t5-small")
                def validation_step(self, batch, batch_idx):
                    loss = self.model(**batch).loss
                    return self.model.generate(**batch)
            """),
        # A prediction batch with no evidence of what it holds.
        Valid("""
            import lightning as L
            from transformers import AutoModelForCausalLM
            class Lit(L.LightningModule):
                def __init__(self):
                    self.model = AutoModelForCausalLM.from_pretrained("gpt2")
                def predict_step(self, batch, batch_idx):
                    return self.model.generate(**batch, max_new_tokens=20)
                def training_step(self, batch, batch_idx):
                    return self.model(**batch).loss
            """),
        # decoder_input_ids removed before generating (as Seq2SeqTrainer does).
        Valid("""
            from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq
            model = AutoModelForSeq2SeqLM.from_pretrained("t5-small")
            collator = DataCollatorForSeq2Seq(tokenizer, model=model)
            for batch in val_loader:
                inputs = {k: v for k, v in batch.items() if k not in ("labels", "decoder_input_ids")}
                model.generate(**inputs)
            """),
        # The collator without model=: no decoder_input_ids in the batch.
        Valid("""
            from torch.utils.data import DataLoader
            from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq
            model = AutoModelForSeq2SeqLM.from_pretrained("t5-small")
            loader = DataLoader(ds, collate_fn=DataCollatorForSeq2Seq(tokenizer), batch_size=8)
            for batch in loader:
                model.generate(**batch)
            """),
        # The evaluation loader uses a different collator than the training one.
        Valid("""
            from torch.utils.data import DataLoader
            from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling, default_data_collator
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            train_loader = DataLoader(train_ds, collate_fn=DataCollatorForLanguageModeling(tokenizer, mlm=False))
            test_loader = DataLoader(test_ds, collate_fn=default_data_collator)
            for batch in test_loader:
                model.generate(**batch)
            """),
        # predict_step: prediction data usually has its own collator; the module's one proves nothing.
        Valid("""
            import lightning as L
            from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq
            collator = DataCollatorForSeq2Seq(tokenizer, model=model)
            class Lit(L.LightningModule):
                def __init__(self):
                    self.model = AutoModelForSeq2SeqLM.from_pretrained("t5-small")
                def predict_step(self, batch, batch_idx):
                    return self.model.generate(**batch)
            """),
        # A home-grown model's generate.
        Valid("""
            model = MiniGPT(config)
            for batch in train_loader:
                loss = model(**batch).loss
                sample = model.generate(**batch)
            """),
    )
    INVALID = (
        # Lightning + DataCollatorForSeq2Seq(model=...) in the data module.
        Invalid(
            """
            import lightning as L
            from torch.utils.data import DataLoader
            from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq
            class Data(L.LightningDataModule):
                def __init__(self, tokenizer, model):
                    self.collator = DataCollatorForSeq2Seq(tokenizer, model=model)
                def val_dataloader(self):
                    return DataLoader(self.val_ds, batch_size=16, collate_fn=self.collator)
            class Summarizer(L.LightningModule):
                def __init__(self):
                    self.model = AutoModelForSeq2SeqLM.from_pretrained("t5-small")
                def validation_step(self, batch, batch_idx):
                    self.log("val_loss", self.model(**batch).loss)
                    return self.model.generate(**batch, max_new_tokens=64)
            """,
            line=14,
            message="`DataCollatorForSeq2Seq(model=...)` (line 6)",
            fix="""
            import lightning as L
            from torch.utils.data import DataLoader
            from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq
            class Data(L.LightningDataModule):
                def __init__(self, tokenizer, model):
                    self.collator = DataCollatorForSeq2Seq(tokenizer, model=model)
                def val_dataloader(self):
                    return DataLoader(self.val_ds, batch_size=16, collate_fn=self.collator)
            class Summarizer(L.LightningModule):
                def __init__(self):
                    self.model = AutoModelForSeq2SeqLM.from_pretrained("t5-small")
                def validation_step(self, batch, batch_idx):
                    self.log("val_loss", self.model(**batch).loss)
                    return self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=64)
            """,
            applicability=Applicability.UNSAFE,
        ),
        # A plain loop over a DataLoader with the collator; labels filtered out, decoder inputs kept.
        Invalid(
            """
            import torch
            from transformers import BartForConditionalGeneration, DataCollatorForSeq2Seq
            model = BartForConditionalGeneration.from_pretrained("facebook/bart-base")
            collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
            eval_loader = torch.utils.data.DataLoader(eval_ds, batch_size=8, collate_fn=collator)
            for batch in eval_loader:
                batch = {k: v.to("cuda") for k, v in batch.items() if k != "labels"}
                generated = model.generate(**batch)
            """,
            line=8,
            message="generation starts from the gold target",
            fix="""
            import torch
            from transformers import BartForConditionalGeneration, DataCollatorForSeq2Seq
            model = BartForConditionalGeneration.from_pretrained("facebook/bart-base")
            collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
            eval_loader = torch.utils.data.DataLoader(eval_ds, batch_size=8, collate_fn=collator)
            for batch in eval_loader:
                batch = {k: v.to("cuda") for k, v in batch.items() if k != "labels"}
                generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            """,
            applicability=Applicability.UNSAFE,
        ),
        # The function itself reads decoder_input_ids of the batch.
        Invalid(
            """
            from transformers import MarianMTModel
            model = MarianMTModel.from_pretrained("Helsinki-NLP/opus-mt-en-de")
            def evaluate(loader):
                for batch in loader:
                    out = model(input_ids=batch["input_ids"], decoder_input_ids=batch["decoder_input_ids"])
                    hyp = model.generate(**batch, num_beams=4)
            """,
            line=6,
            message='`batch["decoder_input_ids"]` (line 5)',
        ),
        # Decoder-only: the loss is computed from the same batch, so input_ids hold the answers.
        Invalid(
            """
            import lightning as L
            from transformers import AutoModelForCausalLM
            class LitLM(L.LightningModule):
                def __init__(self):
                    self.model = AutoModelForCausalLM.from_pretrained("gpt2")
                def validation_step(self, batch, batch_idx):
                    outputs = self.model(**batch)
                    self.log("val_loss", outputs.loss)
                    samples = self.model.generate(**batch, max_new_tokens=32)
            """,
            line=9,
            message="continues after the gold answer",
        ),
        # Decoder-only, the LM collator on the evaluation loader, explicit input_ids.
        Invalid(
            """
            from torch.utils.data import DataLoader
            from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
            eval_loader = DataLoader(eval_ds, collate_fn=collator, batch_size=4)
            for step, batch in enumerate(eval_loader):
                out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            """,
            line=7,
            message="`DataCollatorForLanguageModeling(mlm=False)` (line 4)",
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        instances = ctx.get(Instances)
        for call in ctx.nodes(cst.Call):
            func = call.func
            if not (isinstance(func, cst.Attribute) and func.attr.value == "generate"):
                continue
            kinds = instances.kinds(func.value, call)
            if not is_hf_model(kinds):
                continue
            family = families(kinds)
            if family == {ENCODER_DECODER}:
                yield from self._encoder_decoder(ctx, call, sorted(kinds))
            elif family == {DECODER_ONLY}:
                yield from self._decoder_only(ctx, call, sorted(kinds))

    # -- the two cases -------------------------------------------------------------------------
    def _encoder_decoder(self, ctx: Context, call: cst.Call, kinds: List[str]) -> Iterator[Diagnostic]:
        for arg in call.args:
            if arg.star != "**":
                continue
            found = self._training_batch(ctx, arg.value, call)
            if found is None:
                continue
            root, origin, keeps = found
            if not keeps(DECODER_INPUTS) or self._removed(ctx, root, DECODER_INPUTS, call):
                continue
            evidence = self._key_read(ctx, root, DECODER_INPUTS, call) or self._collator(ctx, origin, DECODER_INPUTS)
            if evidence is None:
                continue
            model = kinds[0].rsplit(".", 1)[-1]
            yield ctx.report(
                arg,
                f"`generate(**{ctx.code(arg.value)})` passes the `decoder_input_ids` of {self._describe(ctx, origin)} "
                f"to encoder-decoder `{model}` ({evidence.text}): generate() uses them as the decoder prompt, so "
                f"generation starts from the gold target and continues after it (the `labels` are ignored)",
                fix=self._fix(ctx, call, arg, kinds),
                help=(f"Pass only the encoder inputs: `input_ids={ctx.code(root)}[\"input_ids\"], "
                      f"attention_mask={ctx.code(root)}[\"attention_mask\"]`"),
            )
            return

    def _decoder_only(self, ctx: Context, call: cst.Call, kinds: List[str]) -> Iterator[Diagnostic]:
        binding = bind(call, GENERATE)
        candidates = [a for a in (binding.arg("inputs"), binding.arg("input_ids")) if a is not None]
        for arg in candidates + [a for a in call.args if a.star == "**"]:
            value = strip_moves(arg.value)
            if arg.star != "**":
                if subscript_key(value) != "input_ids" and not (
                        isinstance(value, cst.Attribute) and value.attr.value == "input_ids"):
                    continue
                value = value.value  # type: ignore[attr-defined]
            found = self._training_batch(ctx, value, call)
            if found is None:
                continue
            root, origin, keeps = found
            if not keeps("input_ids"):
                continue
            evidence = self._loss_from(ctx, origin, call) or self._collator(ctx, origin, COPIED_IDS)
            if evidence is None:
                continue
            model = kinds[0].rsplit(".", 1)[-1]
            shown = f"**{ctx.code(arg.value)}" if arg.star == "**" else ctx.code(arg.value) if arg.keyword is None \
                else f"{arg.keyword.value}={ctx.code(arg.value)}"
            yield ctx.report(
                arg,
                f"`generate({shown})` on {self._describe(ctx, origin)}, whose `input_ids` already hold the "
                f"target tokens ({evidence.text}): decoder-only `{model}` continues after the gold answer "
                f"(generate() ignores `labels`, but the answer is part of the prompt)",
                help="Generate from prompt-only inputs: the prompts tokenized without their answers, "
                     "padded on the left",
            )
            return

    # -- where the batch comes from ------------------------------------------------------------
    def _training_batch(self, ctx: Context, expr: cst.BaseExpression, at: cst.CSTNode
                        ) -> Optional[Tuple[cst.BaseExpression, Origin, Callable[[str], bool]]]:
        """(the batch variable, its LOADER origin, which keys survive) for ``expr``, through
        device moves and key-filtering dict comprehensions."""
        flow = ctx.get(Assignments)
        filters: List[Callable[[str], bool]] = []
        current = strip_moves(expr)
        for _ in range(6):
            if not isinstance(current, cst.Name):
                break
            value = flow.reaching(current)
            if not isinstance(value, cst.DictComp):
                break
            parsed = _filtered_source(value)
            if parsed is None:
                return None
            current, more = parsed
            current = strip_moves(current)
            filters.extend(more)
        origin = ctx.get(Batches).origin(current)
        if origin.provenance is not Provenance.LOADER or not isinstance(current, cst.Name):
            return None
        return current, origin, (lambda key: all(f(key) for f in filters))

    @staticmethod
    def _describe(ctx: Context, origin: Origin) -> str:
        node = origin.node
        if isinstance(node, cst.FunctionDef):
            return f"the batch of `{node.name.value}`"
        if isinstance(node, cst.For):
            loader = _unwrap(node.iter)
            return f"a batch of `{ctx.code(loader)}`"
        return "a collated batch"

    # -- evidence ------------------------------------------------------------------------------
    @staticmethod
    def _same_function(ctx: Context, a: cst.CSTNode, b: cst.CSTNode) -> bool:
        return ctx.enclosing(a, cst.FunctionDef) is ctx.enclosing(b, cst.FunctionDef)

    def _key_read(self, ctx: Context, root: cst.BaseExpression, key: str, at: cst.CSTNode) -> Optional[_Evidence]:
        """``batch["decoder_input_ids"]`` / ``batch.decoder_input_ids`` in the same function."""
        text = ctx.code(root)
        for node in ctx.nodes(cst.Subscript):
            if subscript_key(node) == key and ctx.code(node.value) == text and self._same_function(ctx, node, at):
                return _Evidence(node, f"`{ctx.code(node)}` (line {_row(ctx, node)})")
        for node in ctx.nodes(cst.Attribute):
            if node.attr.value == key and ctx.code(node.value) == text and self._same_function(ctx, node, at):
                return _Evidence(node, f"`{ctx.code(node)}` (line {_row(ctx, node)})")
        return None

    def _removed(self, ctx: Context, root: cst.BaseExpression, key: str, at: cst.CSTNode) -> bool:
        """``batch.pop("key")`` or ``del batch["key"]`` before ``at`` in the same function."""
        text = ctx.code(root)
        for call in ctx.nodes(cst.Call):
            func = call.func
            if isinstance(func, cst.Attribute) and func.attr.value == "pop" and call.args \
                    and ctx.code(func.value) == text and _strings(call.args[0].value) == {key} \
                    and ctx.order(call) < ctx.order(at) and self._same_function(ctx, call, at):
                return True
        for node in ctx.nodes(cst.Del):
            if ctx.order(node) < ctx.order(at) and self._same_function(ctx, node, at) and any(
                    isinstance(s, cst.Subscript) and subscript_key(s) == key and ctx.code(s.value) == text
                    for s in _del_targets(node.target)):
                return True
        return False

    def _loss_from(self, ctx: Context, origin: Origin, at: cst.Call) -> Optional[_Evidence]:
        """A forward of the same batch in the same function whose ``loss`` is read."""
        receiver = ctx.code(at.func.value)  # type: ignore[attr-defined]
        for call in ctx.nodes(cst.Call):
            if call is at or not self._same_function(ctx, call, at):
                continue
            func = call.func
            if isinstance(func, cst.Attribute) and func.attr.value == "generate":
                continue
            if ctx.code(func) not in (receiver, "self", "self.forward", "self.model"):
                continue
            if not any(a.star == "**" and self._same_batch(ctx, a.value, origin, call) for a in call.args):
                continue
            if self._loss_read(ctx, call):
                return _Evidence(call, f"`{ctx.code(call)}` computes a loss from it on line {_row(ctx, call)}: "
                                       f"causal-LM labels are aligned with `input_ids`")
        return None

    def _same_batch(self, ctx: Context, expr: cst.BaseExpression, origin: Origin, at: cst.CSTNode) -> bool:
        found = self._training_batch(ctx, expr, at)
        return found is not None and found[1].node is origin.node

    @staticmethod
    def _loss_read(ctx: Context, call: cst.Call) -> bool:
        parent = ctx.parent(call)
        if isinstance(parent, cst.Attribute) and parent.attr.value == "loss":
            return True
        if isinstance(parent, cst.Subscript) and subscript_key(parent) == "loss":
            return True
        if not (isinstance(parent, cst.Assign) and len(parent.targets) == 1
                and isinstance(parent.targets[0].target, cst.Name)):
            return False
        name = parent.targets[0].target.value
        scope = ctx.enclosing(call, cst.FunctionDef)
        reads = [n for n in ctx.nodes(cst.Attribute) if n.attr.value == "loss"]
        reads += [n for n in ctx.nodes(cst.Subscript) if subscript_key(n) == "loss"]
        return any(isinstance(n.value, cst.Name) and n.value.value == name and ctx.order(n) > ctx.order(call)
                   and ctx.enclosing(n, cst.FunctionDef) is scope for n in reads)

    # -- collators -----------------------------------------------------------------------------
    def _collator(self, ctx: Context, origin: Origin, hazard: str) -> Optional[_Evidence]:
        """The collator that made the batch, when it puts ``hazard`` in it: traced through the
        loop's ``DataLoader(collate_fn=...)`` or the collator call; when the batch's loader is
        out of view, every collator and data loader of the module must agree."""
        node = origin.node
        traced: Optional[List[Tuple[str, Optional[cst.Call]]]] = None
        if isinstance(node, cst.For):
            traced = self._loader_collators(ctx, _unwrap(node.iter), node)
        elif isinstance(node, cst.Call):
            traced = [self._classify(ctx, node.func, node)]
        if traced is None:
            if "predict" in (node.name.value if isinstance(node, cst.FunctionDef) else ctx.code(node)):
                return None  # prediction data usually has its own collator, out of view
            traced = self._module_collators(ctx)
        if not traced or any(kind != hazard for kind, _ in traced):
            return None
        collator = next(call for _, call in traced if call is not None)
        name = ctx.code(collator.func).rsplit(".", 1)[-1]
        shown = {DECODER_INPUTS: f"`{name}(model=...)`", COPIED_IDS: "`DataCollatorForLanguageModeling(mlm=False)`"
                 if name == "DataCollatorForLanguageModeling" else f"`{name}`"}[hazard]
        what = {DECODER_INPUTS: "builds them from the labels", COPIED_IDS: "copies `input_ids` into the labels"}[hazard]
        return _Evidence(collator, f"{shown} (line {_row(ctx, collator)}) {what}")

    def _loader_collators(self, ctx: Context, loader: cst.BaseExpression, at: cst.CSTNode
                          ) -> Optional[List[Tuple[str, Optional[cst.Call]]]]:
        values = _values(ctx, loader, at)
        if not values or not all(self._is_dataloader(ctx, v) for v in values):
            return None
        return [self._classify(ctx, _keyword(v, "collate_fn"), v) for v in values]  # type: ignore[arg-type]

    def _module_collators(self, ctx: Context) -> List[Tuple[str, Optional[cst.Call]]]:
        out = []
        for call in ctx.nodes(cst.Call):
            if self._is_dataloader(ctx, call):
                out.append(self._classify(ctx, _keyword(call, "collate_fn"), call))
            elif any(n.startswith(("transformers.", "trl.")) and n.rsplit(".", 1)[-1].startswith("DataCollator")
                     for n in ctx.names.resolve(call.func)):
                out.append(self._classify(ctx, call, call))
        return out

    @staticmethod
    def _is_dataloader(ctx: Context, node: cst.BaseExpression) -> bool:
        return isinstance(node, cst.Call) and DATALOADER in ctx.names.resolve(node.func)

    def _classify(self, ctx: Context, expr: Optional[cst.BaseExpression], at: cst.CSTNode,
                  depth: int = 0) -> Tuple[str, Optional[cst.Call]]:
        """What a collator expression puts in a batch: DECODER_INPUTS, COPIED_IDS or OTHER."""
        if expr is None or depth > 4:
            return OTHER, None
        if isinstance(expr, (cst.Name, cst.Attribute)) and not ctx.names.resolve(expr):
            values = _values(ctx, expr, at)
            found = [self._classify(ctx, v, at, depth + 1) for v in values]
            kinds = {kind for kind, _ in found}
            return (found[0] if found and len(kinds) == 1 else (OTHER, None))
        if not isinstance(expr, cst.Call):
            return OTHER, None
        names = ctx.names.resolve(expr.func)
        if SEQ2SEQ in names:
            model = bind(expr, CALLS[SEQ2SEQ]).value("model")
            has_model = model is not None and not (isinstance(model, cst.Name) and model.value == "None")
            return (DECODER_INPUTS if has_model else OTHER), expr
        if DCLM in names:
            mlm = bind(expr, CALLS[DCLM]).value("mlm")
            return (COPIED_IDS if isinstance(mlm, cst.Name) and mlm.value == "False" else OTHER), expr
        if COMPLETION_ONLY in names:
            return COPIED_IDS, expr
        return OTHER, None

    # -- fix -----------------------------------------------------------------------------------
    @staticmethod
    def _fix(ctx: Context, call: cst.Call, arg: cst.Arg, kinds: List[str]) -> Optional[Fix]:
        if any(k.rsplit(".", 1)[-1].startswith(_NON_TEXT_STEMS) for k in kinds):
            return None
        binding = bind(call, GENERATE)
        if sum(a.star == "**" for a in call.args) != 1 or any(
                binding.passed(name) for name in ("inputs", "input_ids", "attention_mask")):
            return None
        batch = dotted(arg.value)
        if batch is None:
            return None
        return ctx.fix(
            "Pass only `input_ids` and `attention_mask` of the batch", Applicability.UNSAFE,
            ctx.replace(arg, f'input_ids={batch}["input_ids"], attention_mask={batch}["attention_mask"]'))


def _row(ctx: Context, node: cst.CSTNode) -> int:
    return ctx.locator.location(ctx.span(node)[0]).row


def _keyword(call: cst.Call, name: str) -> Optional[cst.BaseExpression]:
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == name:
            return arg.value
    return None


def _unwrap(iterable: cst.BaseExpression) -> cst.BaseExpression:
    """``enumerate(tqdm(loader))`` -> ``loader``."""
    while isinstance(iterable, cst.Call) and iterable.args and dotted(iterable.func) in (
            "enumerate", "tqdm", "tqdm.tqdm", "iter"):
        iterable = iterable.args[0].value
    return iterable


def _values(ctx: Context, expr: cst.BaseExpression, at: cst.CSTNode) -> List[cst.BaseExpression]:
    """Every value assigned to a local name, or to ``self.<attr>`` in any method of the class of ``at``."""
    instances = ctx.get(Instances)
    if isinstance(expr, cst.Name):
        return instances.values(expr.value, at)
    if isinstance(expr, cst.Attribute) and isinstance(expr.value, cst.Name) and expr.value.value == "self":
        cls = ctx.enclosing(at, cst.ClassDef)
        values = instances.attr_values.get(cls, {}).get(expr.attr.value, []) if cls else []
        return [v for v in values if isinstance(v, cst.BaseExpression)]
    return []


def _del_targets(target: cst.BaseExpression) -> List[cst.BaseExpression]:
    if isinstance(target, (cst.Tuple, cst.List)):
        return [e.value for e in target.elements]
    return [target]
