from __future__ import annotations

from typing import FrozenSet, Iterable, Iterator, Optional

import libcst as cst

from mllint.analysis.batches import Batches, subscript_key
from mllint.analysis.dataflow import Assignments, strip_transparent
from mllint.analysis.instances import UNKNOWN, Instances
from mllint.analysis.names import dotted, string_value
from mllint.analysis.vocab import Vocab, t5_family
from mllint.core.context import Context
from mllint.core.diagnostic import Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid

# What builds decoder inputs with the start token in front.
_SHIFTERS = frozenset({"_shift_right", "shift_tokens_right", "prepare_decoder_input_ids_from_labels",
                       "cat", "concat", "concatenate", "hstack", "column_stack", "pad"})
_START_LITERALS = ("<pad>",)


def _no_bos_seq2seq(kinds: FrozenSet[str], checkpoints: Iterable[Optional[str]]) -> bool:
    """An encoder-decoder whose tokenizer adds no BOS and whose decoder starts from the pad id:
    T5-family models (``T5TokenizerFast``: ``$A </s>``) and Marian (``build_inputs_with_special_tokens``
    appends only EOS; ``decoder_start_token_id`` = ``pad_token_id``)."""
    if t5_family(kinds, checkpoints):
        return True
    lasts = {k.rsplit(".", 1)[-1] for k in kinds}
    if lasts and all(last.startswith("Marian") for last in lasts):
        return True
    names = list(checkpoints)
    return bool(lasts) and all(last.startswith("Auto") for last in lasts) and bool(names) \
        and all(n is not None and "opus-mt" in n for n in names)


def _callee(call: cst.Call) -> str:
    """``f`` for ``f(...)`` and ``x.f(...)``."""
    func = call.func
    if isinstance(func, cst.Attribute):
        return func.attr.value
    return func.value if isinstance(func, cst.Name) else ""


def _slice_end(expr: cst.BaseExpression) -> Optional[str]:
    """``":-1"`` for ``y[:, :-1]`` / ``y[..., :-1]`` / ``y[:-1]``, ``"1:"`` for ``y[:, 1:]``."""
    if not isinstance(expr, cst.Subscript) or not expr.slice:
        return None
    last = expr.slice[-1].slice
    if not isinstance(last, cst.Slice) or last.step is not None:
        return None
    code = cst.Module([]).code_for_node(last).replace(" ", "")
    return code if code in (":-1", "1:") else None


class DecoderInputsWithoutStartToken(Rule):
    """## What it does
    Checks calls of T5-family (T5, mT5, umT5, LongT5, FLAN-T5, ByT5) and Marian models that pass
    hand-built `decoder_input_ids` which cannot start with the decoder start token:

    - the labels themselves: `model(..., decoder_input_ids=labels, labels=labels)` or
      `decoder_input_ids=batch["labels"]`;
    - the tokenized target split by hand: `decoder_input_ids=y[:, :-1]` with `labels=y[:, 1:]`;
    - the target text's token ids directly: `decoder_input_ids=tokenizer(targets).input_ids`.

    Decoder inputs made by `model.prepare_decoder_input_ids_from_labels(labels)`,
    `model._shift_right(labels)`, `shift_tokens_right(labels, pad, start)`, a concatenated start
    column (`torch.cat([start, y[:, :-1]], dim=1)`), a collator's `batch["decoder_input_ids"]`, or
    text that begins with `<pad>` are left alone, and so are BART-style models, whose tokenizers
    emit a BOS token, and decoder-only models.

    ## Why is this bad?
    These models' tokenizers add no BOS (T5: `$A </s>`, `models/t5/tokenization_t5.py`; Marian's
    `build_inputs_with_special_tokens` appends only EOS), and their decoder starts from
    `decoder_start_token_id`, the pad id (T5: 0). Given `labels`, the model builds the decoder
    inputs itself by shifting them one position right behind the start token
    (`T5ForConditionalGeneration.forward` -> `_shift_right`, `models/t5/modeling_t5.py`;
    `shift_tokens_right` in `models/marian/modeling_marian.py`; the same in 4.30 to 5.23), and
    `generate()` always begins with the start token. Hand-built inputs break that: `labels` as
    decoder input teaches the model to copy the current token (and with -100 in the labels
    indexes the embedding out of range); `y[:, :-1]`/`y[:, 1:]` never trains the first target
    token and never shows the decoder its start token, so generation starts from a state the
    model has not learned.

    ## Example
    ```python
    out = model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt[:, :-1], labels=tgt[:, 1:])
    ```

    ## Use instead
    ```python
    labels = tgt.masked_fill(tgt == tokenizer.pad_token_id, -100)
    out = model(input_ids=src, attention_mask=mask, labels=labels)
    ```

    ## Fix safety
    There is no fix: the right labels (pads replaced by -100) and the removal of the slicing
    depend on how the batch is built.

    ## References
    - transformers `models/t5/modeling_t5.py`, `T5PreTrainedModel._shift_right`,
      `T5ForConditionalGeneration.forward`, `prepare_decoder_input_ids_from_labels`
    - transformers `models/bart/modeling_bart.py` and `models/marian/modeling_marian.py`,
      `shift_tokens_right`
    - https://huggingface.co/docs/transformers/model_doc/t5#training
    """

    code = "MLL109"
    name = "decoder-inputs-without-start-token"
    summary = "hand-built decoder_input_ids without the decoder start token (T5/Marian)"
    severity = Severity.WARNING
    tags = ("correctness", "transformers", "seq2seq")
    triggers = (("decoder_input_ids",), ("T5", "t5", "Marian", "opus-mt"))
    requires = (("keyword:decoder_input_ids",), ("import:transformers", "import:peft"))
    premise = {"transformers": ">=2.0"}
    VALID = (
        # labels= only: the model shifts them itself.
        Valid("""
            from transformers import T5ForConditionalGeneration
            model = T5ForConditionalGeneration.from_pretrained("t5-small")
            loss = model(input_ids=src, attention_mask=mask, labels=labels).loss
            """),
        # shift_tokens_right / prepare_decoder_input_ids_from_labels.
        Valid("""
            from transformers import AutoModelForSeq2SeqLM
            from transformers.models.bart.modeling_bart import shift_tokens_right
            model = AutoModelForSeq2SeqLM.from_pretrained("google/flan-t5-base")
            dec = shift_tokens_right(labels, model.config.pad_token_id, model.config.decoder_start_token_id)
            out = model(input_ids=src, decoder_input_ids=dec, labels=labels)
            dec2 = model.prepare_decoder_input_ids_from_labels(labels=labels)
            out = model(input_ids=src, decoder_input_ids=dec2, labels=labels)
            """),
        # A start column concatenated in front.
        Valid("""
            import torch
            from transformers import T5ForConditionalGeneration
            model = T5ForConditionalGeneration.from_pretrained("t5-small")
            start = torch.full((tgt.size(0), 1), model.config.decoder_start_token_id)
            dec = torch.cat([start, tgt[:, :-1]], dim=1)
            out = model(input_ids=src, decoder_input_ids=dec, labels=tgt)
            """),
        # BART's tokenizer emits <s>: y[:, :-1] starts with BOS.
        Valid("""
            from transformers import BartForConditionalGeneration
            model = BartForConditionalGeneration.from_pretrained("facebook/bart-base")
            out = model(input_ids=src, decoder_input_ids=tgt[:, :-1], labels=tgt[:, 1:])
            """),
        # A decoder-only model has no decoder_input_ids.
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            out = model(input_ids=ids, labels=ids)
            """),
        # The collator's decoder_input_ids (DataCollatorForSeq2Seq(model=...)).
        Valid("""
            from transformers import T5ForConditionalGeneration
            model = T5ForConditionalGeneration.from_pretrained("t5-small")
            for batch in loader:
                out = model(input_ids=batch["input_ids"], decoder_input_ids=batch["decoder_input_ids"],
                            labels=batch["labels"])
            """),
        # Scoring a forced prefix that starts with the start token.
        Valid("""
            from transformers import AutoTokenizer, T5Model
            tokenizer = AutoTokenizer.from_pretrained("t5-small")
            model = T5Model.from_pretrained("t5-small")
            dec = tokenizer("<pad> Studies show", return_tensors="pt", add_special_tokens=False).input_ids
            out = model(input_ids=ids, decoder_input_ids=dec)
            """),
    )
    INVALID = (
        Invalid(
            """
            from transformers import T5ForConditionalGeneration
            model = T5ForConditionalGeneration.from_pretrained("t5-base")
            for batch in loader:
                y = batch["target_ids"]
                out = model(input_ids=batch["source_ids"], decoder_input_ids=y[:, :-1], labels=y[:, 1:])
            """,
            line=5,
            message="first target token",
        ),
        Invalid(
            """
            from transformers import AutoModelForSeq2SeqLM
            model = AutoModelForSeq2SeqLM.from_pretrained("google/flan-t5-small")
            def step(batch):
                return model(input_ids=batch["input_ids"], decoder_input_ids=batch["labels"],
                             labels=batch["labels"]).loss
            """,
            line=4,
            message="the labels themselves",
        ),
        Invalid(
            """
            import lightning as L
            from transformers import AutoTokenizer, MT5ForConditionalGeneration
            class Translator(L.LightningModule):
                def __init__(self):
                    super().__init__()
                    self.tokenizer = AutoTokenizer.from_pretrained("google/mt5-small")
                    self.model = MT5ForConditionalGeneration.from_pretrained("google/mt5-small")
                def training_step(self, batch, batch_idx):
                    target = self.tokenizer(batch["target"], padding=True, return_tensors="pt").input_ids
                    return self.model(**self.tokenizer(batch["source"], padding=True, return_tensors="pt"),
                                      decoder_input_ids=target).loss
            """,
            line=11,
            message="tokenized target text",
        ),
        Invalid(
            """
            from transformers import MarianMTModel
            model = MarianMTModel.from_pretrained("Helsinki-NLP/opus-mt-en-de")
            out = model.forward(input_ids=src, decoder_input_ids=tgt, labels=tgt)
            """,
            line=3,
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        instances = ctx.get(Instances)
        vocab = ctx.get(Vocab)
        flow = ctx.get(Assignments)
        for call in ctx.nodes(cst.Call):
            keywords = {a.keyword.value: a for a in call.args if a.keyword is not None}
            decoder = keywords.get("decoder_input_ids")
            if decoder is None:
                continue
            func = call.func
            receiver = func.value if isinstance(func, cst.Attribute) and func.attr.value == "forward" else func
            kinds = instances.kinds(receiver, call)
            if not kinds or UNKNOWN in kinds or not _no_bos_seq2seq(kinds, vocab.checkpoints(receiver, call)):
                continue
            labels = keywords.get("labels")
            problem = self._problem(ctx, flow, decoder.value, labels.value if labels else None)
            if problem is None:
                continue
            name = dotted(strip_transparent(receiver))
            checkpoints = sorted(n for n in vocab.checkpoints(receiver, call) if n)
            label = " ".join(filter(None, (f"`{name}`" if name else "the model",
                                           f"({', '.join(checkpoints)})" if checkpoints else "")))
            yield ctx.report(
                decoder,
                f"`decoder_input_ids={ctx.code(decoder.value)}` given to {label} is {problem}; "
                "T5/Marian tokenizers add "
                "no BOS, and the decoder must start from `decoder_start_token_id` (the pad id), as "
                "`generate()` does",
                help="Pass only `labels=` (pads replaced by -100): the model builds `decoder_input_ids` "
                     "by shifting them right behind the start token (`_shift_right`)",
            )

    def _problem(self, ctx: Context, flow: Assignments, decoder: cst.BaseExpression,
                 labels: Optional[cst.BaseExpression]) -> Optional[str]:
        if self._built_with_start(flow, decoder):
            return None
        chain = flow.trace(decoder, limit=6)
        root = flow.unsliced_root(decoder)
        if root is not None and labels is not None and root == flow.unsliced_root(labels):
            return "the labels themselves: the model learns to copy each token (no shift)"
        if any(subscript_key(strip_transparent(e)) == "labels" for e in chain):
            return "the labels themselves: the model learns to copy each token (no shift)"
        if _slice_end(strip_transparent(decoder)) == ":-1" and labels is not None \
                and _slice_end(strip_transparent(labels)) == "1:":
            base = strip_transparent(decoder).value
            root = flow.unsliced_root(base)
            if root is not None and root == flow.unsliced_root(strip_transparent(labels).value):
                return ("the target without its last token: the first target token is never trained "
                        "and the decoder never sees its start token")
        if self._tokenized_text(ctx, flow, chain):
            return "the tokenized target text, which does not begin with the decoder start token"
        return None

    @staticmethod
    def _built_with_start(flow: Assignments, base: cst.BaseExpression) -> bool:
        for expr in flow.derivation(base, limit=60):
            if isinstance(expr, cst.Call) and _callee(expr) in _SHIFTERS:
                return True
        return False

    @staticmethod
    def _tokenized_text(ctx: Context, flow: Assignments, chain) -> bool:
        batches = ctx.get(Batches)
        for expr in chain:
            expr = strip_transparent(expr)
            if isinstance(expr, cst.Attribute) and expr.attr.value == "input_ids":
                base = expr.value
            elif subscript_key(expr) == "input_ids":
                base = expr.value
            elif isinstance(expr, cst.Call):
                base = expr
            else:
                continue
            for source in flow.trace(base, limit=4):
                source = strip_transparent(source)
                if isinstance(source, cst.Call):
                    found = batches.tokenizer_call(source)
                    if found is None or found[1] not in ("__call__", "encode", "batch_encode_plus", "encode_plus"):
                        continue
                    text = source.args[0].value if source.args and source.args[0].keyword is None else None
                    value = string_value(text) if text is not None else None
                    return not (value and value.lstrip().startswith(_START_LITERALS))
        return False
