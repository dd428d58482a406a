"""Hugging Face facts of a module: what kind of model or tokenizer a receiver is, how tokenizers'
pad tokens are set and how labels are masked.

Each fact keeps the node it came from, so rules can report and fix at the right place and say
which line supplied the evidence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, FrozenSet, Iterable, List, Optional, Sequence

import libcst as cst

from mllint.analysis.dataflow import strip_transparent
from mllint.analysis.names import dotted, string_value
from mllint.analysis.signatures import CALLS, bind

if TYPE_CHECKING:
    from mllint.core.context import Context

PAD_ATTRS = ("pad_token", "pad_token_id")
EOS_ATTRS = ("eos_token", "eos_token_id")
# Receivers whose ``pad_token_id`` is a model or generation setting, not the tokenizer's: setting
# them does not change what a collator compares labels with.
_CONFIG_RECEIVERS = ("config", "generation_config")

DCLM = "transformers.DataCollatorForLanguageModeling"
COMPLETION_ONLY = "trl.DataCollatorForCompletionOnlyLM"
SFT_TRAINER = "trl.SFTTrainer"


DECODER_ONLY = "decoder-only"
ENCODER_DECODER = "encoder-decoder"

# Model families whose ``*ForConditionalGeneration`` / ``*Model`` with an LM head is an
# encoder-decoder (transformers/models/<family>/modeling_<family>.py, ``config.is_encoder_decoder``
# True in their configuration classes, 4.x and 5.x). Every other ``*ForConditionalGeneration``
# (Llava, PaliGemma, Qwen2-VL, Gemma 3, ...) is a decoder-only language model with a vision tower,
# so it gets no family and the encoder-decoder-specific rules leave it alone.
_ENCODER_DECODER_STEMS = frozenset({
    "T5", "MT5", "UMT5", "LongT5", "SwitchTransformers", "Bart", "MBart", "PLBart", "Mvp",
    "Pegasus", "PegasusX", "BigBirdPegasus", "Marian", "M2M100", "NllbMoe", "LED", "FSMT",
    "ProphetNet", "XLMProphetNet", "Blenderbot", "BlenderbotSmall", "Whisper", "Speech2Text",
    "Pix2Struct", "SeamlessM4T", "SeamlessM4Tv2", "EncoderDecoder", "VisionEncoderDecoder",
    "SpeechEncoderDecoder",
})
_STEM = re.compile(r"^([A-Za-z0-9]+?)(ForConditionalGeneration|MTModel|WithLMHeadModel|Model)$")
_ENCODER_DECODER_AUTO = frozenset({"AutoModelForSeq2SeqLM", "AutoModelForSpeechSeq2Seq",
                                   "AutoPeftModelForSeq2SeqLM", "PeftModelForSeq2SeqLM"})


def _last(kind: str) -> str:
    return kind.rsplit(".", 1)[-1]


def is_model_kind(kind: str) -> bool:
    """A Hugging Face (or peft) model class: ``AutoModelForCausalLM``, ``T5ForConditionalGeneration``,
    ``GPT2LMHeadModel``, ``PeftModel``. Not tokenizers, configs, collators, trainers."""
    if not kind.startswith(("transformers.", "peft.")):
        return False
    last = _last(kind)
    if last.startswith("DataCollator") or re.search(r"Tokeniz|Config|Processor|Trainer|Arguments|"
                                                     r"Pipeline|Collator|Callback", last):
        return False
    return bool(re.search(r"(Model|For[A-Z][A-Za-z0-9]*)$", last))


def model_family(kind: str) -> Optional[str]:
    """``DECODER_ONLY``, ``ENCODER_DECODER``, or None when the class does not say."""
    if not is_model_kind(kind):
        return None
    last = _last(kind)
    if last in _ENCODER_DECODER_AUTO:
        return ENCODER_DECODER
    match = _STEM.match(last)
    if match and match.group(1) in _ENCODER_DECODER_STEMS:
        return ENCODER_DECODER
    if last.endswith(("ForCausalLM", "LMHeadModel")):
        return DECODER_ONLY
    return None


def families(kinds: Iterable[str]) -> FrozenSet[Optional[str]]:
    """The families of every candidate kind (``None`` in it when some candidate says nothing)."""
    return frozenset(model_family(k) for k in kinds)


def is_hf_model(kinds: Iterable[str]) -> bool:
    """Every candidate is a Hugging Face model (so ``generate`` is ``GenerationMixin.generate``)."""
    kinds = list(kinds)
    return bool(kinds) and all(is_model_kind(k) for k in kinds)


def is_tokenizer_kind(kind: str) -> bool:
    """``AutoTokenizer``, ``LlamaTokenizerFast``, ``AutoProcessor``, ``WhisperProcessor``, ..."""
    last = _last(kind)
    return kind.startswith("transformers.") and ("Tokenizer" in last or last.endswith("Processor"))


def is_eos_expr(expr: cst.BaseExpression) -> bool:
    """``tok.eos_token``, ``tok.eos_token_id``, ``model.config.eos_token_id``, and the same as
    one branch of ``a if c else b`` / ``a or b`` (the "set pad to EOS when missing" idioms)."""
    expr = strip_transparent(expr)
    if isinstance(expr, cst.Attribute):
        return expr.attr.value in EOS_ATTRS
    if isinstance(expr, cst.IfExp):
        return is_eos_expr(expr.body) or is_eos_expr(expr.orelse)
    if isinstance(expr, cst.BooleanOperation):
        return is_eos_expr(expr.left) or is_eos_expr(expr.right)
    return False


@dataclass(frozen=True)
class PadAssignment:
    """One place that sets a tokenizer's pad token."""

    node: cst.CSTNode  # what to report: the Assign, the call, or the keyword argument
    statement: Optional[cst.SimpleStatementLine]
    receiver: str  # source text of the tokenizer expression ("" when unknown)
    value: cst.BaseExpression  # the expression the pad token is set to
    spelling: str  # "attribute", "add_special_tokens", "setattr", "from_pretrained"
    is_eos: bool
    order: int


@dataclass(frozen=True)
class LabelMasking:
    """Evidence that labels are masked by *value* (``labels == pad_token_id`` -> -100)."""

    node: cst.CSTNode
    description: str


def _is_tokenizer_loader(ctx: "Context", call: cst.Call) -> bool:
    func = call.func
    if not (isinstance(func, cst.Attribute) and func.attr.value == "from_pretrained"):
        return False
    for name in ctx.names.resolve(func.value):
        last = name.rsplit(".", 1)[-1]
        if name.startswith("transformers.") and ("Tokenizer" in last or last == "AutoProcessor"):
            return True
    return False


class HfFacts:
    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self.pad_assignments: List[PadAssignment] = sorted(self._pad_assignments(), key=lambda p: p.order)

    # -- pad token assignments -----------------------------------------------------------------
    def _statement(self, node: cst.CSTNode) -> Optional[cst.SimpleStatementLine]:
        return self.ctx.enclosing(node, cst.SimpleStatementLine)

    def _pad_assignments(self):
        ctx = self.ctx
        for node in ctx.nodes(cst.Assign):
            for target in node.targets:
                t = target.target
                if isinstance(t, cst.Attribute) and t.attr.value in PAD_ATTRS:
                    receiver = t.value
                    if isinstance(receiver, cst.Attribute) and receiver.attr.value in _CONFIG_RECEIVERS:
                        continue
                    if isinstance(receiver, cst.Name) and receiver.value in _CONFIG_RECEIVERS:
                        continue
                    yield PadAssignment(node, self._statement(node), ctx.code(receiver), node.value,
                                        "attribute", is_eos_expr(node.value), ctx.order(node))
        for call in ctx.nodes(cst.Call):
            func = call.func
            if isinstance(func, cst.Attribute) and func.attr.value == "add_special_tokens" and call.args:
                mapping = call.args[0].value
                if isinstance(mapping, cst.Dict):
                    for element in mapping.elements:
                        if isinstance(element, cst.DictElement) and string_value(element.key) == "pad_token":
                            yield PadAssignment(element, self._statement(call), ctx.code(func.value),
                                                element.value, "add_special_tokens",
                                                is_eos_expr(element.value), ctx.order(call))
            elif isinstance(func, cst.Name) and func.value == "setattr" and len(call.args) >= 3:
                if string_value(call.args[1].value) in PAD_ATTRS:
                    value = call.args[2].value
                    yield PadAssignment(call, self._statement(call), ctx.code(call.args[0].value), value,
                                        "setattr", is_eos_expr(value), ctx.order(call))
            elif _is_tokenizer_loader(ctx, call):
                keywords = {a.keyword.value: a for a in call.args if a.keyword is not None}
                pad = keywords.get("pad_token")
                if pad is None:
                    continue
                eos = keywords.get("eos_token")
                same_literal = (eos is not None and string_value(pad.value) is not None
                                and string_value(pad.value) == string_value(eos.value))
                parent = ctx.parent(call)
                receiver = ""
                if isinstance(parent, cst.Assign) and len(parent.targets) == 1:
                    receiver = ctx.code(parent.targets[0].target)
                yield PadAssignment(pad, self._statement(call), receiver, pad.value, "from_pretrained",
                                    is_eos_expr(pad.value) or same_literal, ctx.order(call))

    def eos_pad_assignments(self) -> List[PadAssignment]:
        """Pad-is-EOS assignments that no later assignment on the same receiver undoes."""
        out = []
        for i, pad in enumerate(self.pad_assignments):
            if not pad.is_eos:
                continue
            undone = any(not later.is_eos and later.receiver == pad.receiver and pad.receiver
                         for later in self.pad_assignments[i + 1:])
            if not undone:
                out.append(pad)
        return out

    # -- label masking -----------------------------------------------------------------------
    def value_label_masking(self, extra_collators: Sequence[str] = ()) -> List[LabelMasking]:
        ctx = self.ctx
        out: List[LabelMasking] = []
        trl = ctx.target_version("trl")
        for call in ctx.nodes(cst.Call):
            names = ctx.names.resolve(call.func)
            if DCLM in names:
                mlm = bind(call, CALLS[DCLM]).value("mlm")
                if isinstance(mlm, cst.Name) and mlm.value == "False":
                    out.append(LabelMasking(call, "`DataCollatorForLanguageModeling(mlm=False)`"))
            elif COMPLETION_ONLY in names:
                out.append(LabelMasking(call, "`DataCollatorForCompletionOnlyLM` (a subclass of "
                                              "`DataCollatorForLanguageModeling`)"))
            elif SFT_TRAINER in names and trl.release < (0, 16):
                if not _sft_passes(call, "data_collator", _SFT_DATA_COLLATOR):
                    out.append(LabelMasking(call, f"`SFTTrainer` with {ctx.version_fact('trl')} (whose "
                                                  "default collator is `DataCollatorForLanguageModeling(mlm=False)`)"))
            elif names & set(extra_collators):
                out.append(LabelMasking(call, f"`{ctx.code(call.func)}` (configured as a value-masking collator)"))
        seen = set()
        for comparison in ctx.nodes(cst.Comparison):
            statement = ctx.enclosing(comparison, cst.SimpleStatementLine)
            if statement is None or statement in seen or not _compares_pad(comparison):
                continue
            if _contains(statement, _is_minus_100):
                seen.add(statement)
                out.append(LabelMasking(statement, "a hand-written `labels == pad_token_id` -> -100 masking"))
        return sorted(out, key=lambda m: ctx.order(m.node))

    def trl_eos_pads(self) -> List[cst.Call]:
        """``SFTTrainer(...)`` calls of trl < 0.16 given no tokenizer and no collator: trl loads the
        tokenizer itself, sets ``pad_token = eos_token`` when it has none, and collates with
        ``DataCollatorForLanguageModeling(mlm=False)`` (trl 0.15.2 ``trainer/sft_trainer.py``,
        ``SFTTrainer.__init__``: ``if processing_class is None: ... processing_class.pad_token =
        processing_class.eos_token``, then ``if data_collator is None: data_collator =
        DataCollatorForLanguageModeling(tokenizer=processing_class, mlm=False)``). trl 0.16 loads
        the tokenizer without touching its pad token and pads labels with -100 by position."""
        ctx = self.ctx
        if ctx.target_version("trl").release >= (0, 16):
            return []
        return [call for call in ctx.nodes(cst.Call)
                if SFT_TRAINER in ctx.names.resolve(call.func)
                and not _sft_passes(call, "data_collator", _SFT_DATA_COLLATOR)
                and not _sft_passes(call, "processing_class", _SFT_TOKENIZER)
                and not _sft_passes(call, "tokenizer", _SFT_TOKENIZER)]

    def packs_without_eos(self) -> bool:
        """True for the run_clm/"group_texts" recipe: examples concatenated into fixed blocks,
        no EOS appended anywhere, so no label equals the pad id and value masking hides nothing."""
        ctx = self.ctx
        source = ctx.source
        concatenates = ("sum(examples[" in source or "chain(*examples[" in source
                        or "return_overflowing_tokens" in source)
        if not concatenates or "add_eos_token" in source or "apply_chat_template" in source:
            return False
        pad_values = {id(p.value) for p in self.pad_assignments}
        for attribute in ctx.nodes(cst.Attribute):
            if attribute.attr.value in EOS_ATTRS and not any(
                    id(a) in pad_values or _is_token_setting(a) for a in (attribute, *ctx.ancestors(attribute))):
                return False
        return True


# trl <= 0.15 ``SFTTrainer.__init__(model, args, data_collator, train_dataset, eval_dataset,
# processing_class | tokenizer, ...)``: positions of the collator and the tokenizer.
_SFT_DATA_COLLATOR = 2
_SFT_TOKENIZER = 5


def _sft_passes(call: cst.Call, keyword: str, position: int) -> bool:
    """Whether an ``SFTTrainer(...)`` call may pass ``keyword`` (by name, by position, or hidden
    in a ``*``/``**`` splat); an explicit ``None`` passes nothing."""
    if any(a.star for a in call.args):
        return True
    positional = [a for a in call.args if a.keyword is None]
    named = [a for a in call.args if a.keyword is not None and a.keyword.value == keyword]
    bound = named or positional[position:position + 1]
    return any(not (isinstance(a.value, cst.Name) and a.value.value == "None") for a in bound)


def _is_token_setting(node: cst.CSTNode) -> bool:
    """A special-token id given to a model config or generation setting (``eos_token_id=...``,
    ``bos_token_id=...`` keywords): it configures ids, it puts no token into the data."""
    return isinstance(node, cst.Arg) and node.keyword is not None and node.keyword.value.endswith("_token_id")


def _is_minus_100(node: cst.CSTNode) -> bool:
    return (isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.Minus)
            and isinstance(node.expression, cst.Integer) and node.expression.value == "100")


def _compares_pad(node: cst.Comparison) -> bool:
    """``x == tok.pad_token_id`` / ``x != pad_token_id`` (either side)."""
    if not any(isinstance(t.operator, (cst.Equal, cst.NotEqual)) for t in node.comparisons):
        return False
    for operand in (node.left, *(t.comparator for t in node.comparisons)):
        name = dotted(strip_transparent(operand))
        if name is not None and name.rsplit(".", 1)[-1] in ("pad_token_id", "pad_id"):
            return True
    return False


class _Finder(cst.CSTVisitor):
    def __init__(self, predicate) -> None:
        self.predicate = predicate
        self.found = False

    def on_visit(self, node: cst.CSTNode) -> bool:
        if self.found or self.predicate(node):
            self.found = True
            return False
        return True


def _contains(node: cst.CSTNode, predicate) -> bool:
    finder = _Finder(predicate)
    node.visit(finder)
    return finder.found
