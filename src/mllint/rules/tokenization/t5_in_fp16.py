from __future__ import annotations

import re
from typing import Iterable, Iterator, Optional, Tuple

import libcst as cst

from mllint.analysis.dataflow import strip_transparent
from mllint.analysis.instances import UNKNOWN, Instances
from mllint.analysis.names import dotted, string_value
from mllint.analysis.vocab import Vocab, t5_family
from mllint.core.context import Context
from mllint.core.diagnostic import Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid

# Argument classes whose ``fp16=True`` turns on fp16 autocast (``fp16_full_eval``: a ``.half()``
# model for evaluation). trl's configs subclass ``TrainingArguments``.
_ARGUMENTS = ("transformers.TrainingArguments", "transformers.Seq2SeqTrainingArguments")
_FP16_FLAGS = ("fp16", "fp16_full_eval")
_LIGHTNING_TRAINERS = frozenset({"lightning.Trainer", "lightning.pytorch.Trainer", "pytorch_lightning.Trainer",
                                 "lightning.fabric.Fabric", "lightning.Fabric"})
_LIGHTNING_FP16 = frozenset({"16", "16-mixed", "16-true"})
_AUTOCAST = frozenset({"torch.autocast", "torch.amp.autocast", "torch.amp.autocast_mode.autocast"})
_CUDA_AUTOCAST = frozenset({"torch.cuda.amp.autocast"})
# T5 v1.1-architecture (gated-GELU) models and checkpoints: the ones whose float16 activations
# overflow even with transformers' clamp (transformers#9295: original T5 trains in fp16 since the
# clamp, v1.1 and mT5 do not). FLAN-T5 and ByT5 are v1.1-based.
_V11_CLASS = re.compile(r"^(MT5|UMT5|LongT5)[A-Z]")
_V11_CHECKPOINT = re.compile(r"flan-t5|t5-v1_1|t5_v1_1|mt5|umt5|byt5|long-?t5", re.IGNORECASE)


def _overflows(kinds: Iterable[str], checkpoints: Iterable[Optional[str]]) -> bool:
    """A T5 v1.1-architecture model: an mT5/umT5/LongT5 class, or a T5-family model whose
    checkpoints all name a v1.1-based release."""
    kinds = [k for k in kinds if k != UNKNOWN]
    if kinds and all(_V11_CLASS.match(k.rsplit(".", 1)[-1]) for k in kinds):
        return True
    names = list(checkpoints)
    return bool(t5_family(kinds, names)) and bool(names) and all(
        n is not None and _V11_CHECKPOINT.search(n) for n in names)


def _is_fp16_dtype(ctx: Context, expr: Optional[cst.BaseExpression]) -> bool:
    if expr is None:
        return False
    return bool(ctx.names.resolve(expr) & {"torch.float16", "torch.half"}) or string_value(expr) in (
        "float16", "fp16")


def _true(expr: cst.BaseExpression) -> bool:
    return isinstance(expr, cst.Name) and expr.value == "True"


def _keywords(call: cst.Call):
    return {a.keyword.value: a for a in call.args if a.keyword is not None}


class T5InFp16(Rule):
    """## What it does
    Checks for T5 v1.1-architecture models (mT5, umT5, LongT5, FLAN-T5, ByT5, `t5-v1_1-*`: an
    `MT5*`/`UMT5*`/`LongT5*` class, or a `T5*`/auto class whose checkpoint names one of them) run
    in float16: `model.half()` / `model.to(torch.float16)`, or, in a module whose every model is
    such a model, fp16 mixed precision (`TrainingArguments(fp16=True)`,
    `Seq2SeqTrainingArguments(fp16=True)`, `fp16_full_eval=True`, trl configs, Lightning
    `Trainer(precision="16-mixed")`, accelerate's `Accelerator(mixed_precision="fp16")`,
    `torch.autocast("cuda")` / `torch.cuda.amp.autocast()`, whose default dtype is float16).

    Left alone: bfloat16 and float32; a model loaded with `torch_dtype=torch.float16` (`dtype=`
    in v5), for which transformers keeps the `wo` layers in float32 (see below); the original T5
    checkpoints (`t5-small` ... `t5-11b`), which train in fp16 since transformers added its clamp
    (transformers#9295); and T5 models whose checkpoint the module does not show.

    ## Why is this bad?
    T5 was pre-trained in bfloat16. In the v1.1 architecture (gated-GELU feed-forward, used by
    mT5, FLAN-T5 and ByT5) the feed-forward activations exceed float16's range (65504); the
    residual stream overflows to inf and then NaN: NaN loss in training, empty or garbage
    generations in inference.

    What transformers mitigates, identically in 4.30, 4.46, 4.57.6 and 5.23.0
    (`models/t5/modeling_t5.py`, also `mt5`/`umt5`):
    - `T5Block.forward` clamps the hidden states to ±(max - 1000) whenever they are float16 and
      contain inf ("clamp inf values to enable fp16 training"). This removes infs after the
      overflow has happened; NaNs pass through. It was enough for the original T5, not for v1.1.
    - `T5PreTrainedModel._keep_in_fp32_modules = ["wo"]`: `from_pretrained(...,
      torch_dtype=torch.float16)` keeps the feed-forward output projection in float32 and
      `T5DenseActDense`/`T5DenseGatedActDense.forward` casts its input up (`modeling_utils.py`:
      4.30 and 4.46 when `torch_dtype == torch.float16`, 5.23.0 `dtype_plan` for float16). That
      is why fp16 *loading* works. `.half()` casts `wo` to float16 as well, and autocast
      (`fp16=True`) runs every `nn.Linear`, `wo` included, in float16 whatever the weights'
      dtype, so neither benefits. LongT5 has neither the clamp nor `_keep_in_fp32_modules`.

    ## Example
    ```python
    model = AutoModelForSeq2SeqLM.from_pretrained("google/flan-t5-large")
    args = Seq2SeqTrainingArguments("out", fp16=True)
    ```

    ## Use instead
    ```python
    model = AutoModelForSeq2SeqLM.from_pretrained("google/flan-t5-large")
    args = Seq2SeqTrainingArguments("out", bf16=True)  # Ampere or newer; else train in fp32
    ```

    ## Fix safety
    There is no fix: `bf16=True` needs hardware support (Ampere or newer), and fp32 changes
    memory and speed; the choice is the user's.

    ## References
    - transformers `models/t5/modeling_t5.py`, `T5Block.forward`, `T5DenseGatedActDense.forward`,
      `T5PreTrainedModel._keep_in_fp32_modules`
    - transformers `modeling_utils.py`, `PreTrainedModel.from_pretrained` (keep-in-fp32 handling)
    - https://github.com/huggingface/transformers/issues/9295
    - https://github.com/huggingface/transformers/issues/4586
    - https://github.com/google-research/text-to-text-transfer-transformer/issues/539
    """

    code = "MLL107"
    name = "t5-in-fp16"
    summary = "T5 v1.1-family model (mT5, FLAN-T5, ByT5) run in float16: activations overflow to NaN"
    severity = Severity.WARNING
    tags = ("correctness", "transformers", "precision")
    triggers = (("T5", "t5"), ("fp16", "half", "float16", "16", "autocast"))
    requires = (("import:transformers", "import:peft"),)
    premise = {"transformers": ">=2.0"}
    VALID = (
        # bf16 mixed precision.
        Valid("""
            from transformers import AutoModelForSeq2SeqLM, Seq2SeqTrainingArguments
            model = AutoModelForSeq2SeqLM.from_pretrained("google/flan-t5-base")
            args = Seq2SeqTrainingArguments("out", bf16=True)
            """),
        # Inference in fp32.
        Valid("""
            from transformers import T5ForConditionalGeneration
            model = T5ForConditionalGeneration.from_pretrained("t5-small").eval()
            out = model.generate(input_ids, max_new_tokens=32)
            """),
        # A non-T5 seq2seq model in fp16.
        Valid("""
            from transformers import AutoModelForSeq2SeqLM, Seq2SeqTrainingArguments
            model = AutoModelForSeq2SeqLM.from_pretrained("facebook/bart-base")
            args = Seq2SeqTrainingArguments("out", fp16=True)
            """),
        # Loaded in fp16: transformers keeps `wo` in float32.
        Valid("""
            import torch
            from transformers import T5ForConditionalGeneration
            model = T5ForConditionalGeneration.from_pretrained("google/flan-t5-xl", torch_dtype=torch.float16)
            """),
        # fp16 training next to a model whose checkpoint is not visible.
        Valid("""
            from transformers import AutoModelForSeq2SeqLM, TrainingArguments
            model = AutoModelForSeq2SeqLM.from_pretrained(args.model_name)
            training_args = TrainingArguments("out", fp16=True)
            """),
        # The original T5 trains in fp16 since transformers clamps its activations.
        Valid("""
            from transformers import AutoModelForSeq2SeqLM, Seq2SeqTrainingArguments
            model_checkpoint = "t5-small"
            model = AutoModelForSeq2SeqLM.from_pretrained(model_checkpoint)
            args = Seq2SeqTrainingArguments("out", fp16=True)
            """),
        # accelerate in bf16.
        Valid("""
            from accelerate import Accelerator
            from transformers import MT5ForConditionalGeneration
            model = MT5ForConditionalGeneration.from_pretrained("google/mt5-small")
            accelerator = Accelerator(mixed_precision="bf16")
            """),
        # CPU autocast defaults to bfloat16.
        Valid("""
            import torch
            from transformers import T5ForConditionalGeneration
            model = T5ForConditionalGeneration.from_pretrained("google/flan-t5-base")
            with torch.autocast("cpu"):
                loss = model(**batch).loss
            """),
    )
    INVALID = (
        Invalid(
            """
            from transformers import AutoModelForSeq2SeqLM, Seq2SeqTrainingArguments
            MODEL = "google/flan-t5-large"
            model = AutoModelForSeq2SeqLM.from_pretrained(MODEL)
            args = Seq2SeqTrainingArguments(output_dir="out", fp16=True, predict_with_generate=True)
            """,
            line=4,
            message="`model` (google/flan-t5-large)",
        ),
        Invalid(
            """
            from transformers import T5ForConditionalGeneration
            model = T5ForConditionalGeneration.from_pretrained("google/t5-v1_1-base").half().cuda()
            """,
            line=2,
            message="`.half()`",
        ),
        Invalid(
            """
            import torch
            import lightning as L
            from transformers import MT5ForConditionalGeneration
            class Summarizer(L.LightningModule):
                def __init__(self):
                    super().__init__()
                    self.model = MT5ForConditionalGeneration.from_pretrained("google/mt5-base")
            trainer = L.Trainer(max_epochs=3, precision="16-mixed")
            """,
            line=8,
            message="precision=\"16-mixed\"",
        ),
        Invalid(
            """
            import torch
            from transformers import T5ForConditionalGeneration
            model = T5ForConditionalGeneration.from_pretrained("google/flan-t5-base").to("cuda")
            scaler = torch.cuda.amp.GradScaler()
            for batch in loader:
                with torch.autocast(device_type="cuda"):
                    loss = model(**batch).loss
                scaler.scale(loss).backward()
            """,
            line=6,
            message="float16 by default",
        ),
        Invalid(
            """
            from accelerate import Accelerator
            from transformers import MT5ForConditionalGeneration
            model = MT5ForConditionalGeneration.from_pretrained("google/mt5-small")
            accelerator = Accelerator(mixed_precision="fp16")
            model = accelerator.prepare(model)
            """,
            line=4,
            message='`mixed_precision="fp16"`',
        ),
        Invalid(
            """
            import torch
            from transformers import T5ForConditionalGeneration
            model = T5ForConditionalGeneration.from_pretrained("google/byt5-small")
            model.to(torch.float16)
            """,
            line=4,
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        vocab = ctx.get(Vocab)
        instances = ctx.get(Instances)
        models = vocab.models()
        verdicts = [(m, _overflows(m.kinds, vocab.checkpoints(m.node.value, m.node))) for m in models]
        t5_models = [m for m, verdict in verdicts if verdict]
        whole_module = bool(t5_models) and all(verdict for _, verdict in verdicts)
        for call in ctx.nodes(cst.Call):
            cast = self._cast(ctx, call)
            if cast is not None:
                receiver, spelling = cast
                kinds = instances.kinds(receiver, call)
                if UNKNOWN in kinds or not _overflows(kinds, vocab.checkpoints(receiver, call)):
                    continue
                name = dotted(strip_transparent(receiver))
                checkpoints = sorted(n for n in vocab.checkpoints(receiver, call) if n)
                label = " ".join(filter(None, (f"`{name}`" if name else "",
                                               f"({', '.join(checkpoints)})" if checkpoints else "")))
                yield ctx.report(
                    call,
                    f"`{spelling}` casts the T5 v1.1-architecture model {label} to float16, its `wo` feed-forward "
                    "projections included (only a `torch_dtype=torch.float16` load keeps them in "
                    "float32): T5's activations exceed the float16 range and turn inf/NaN, and "
                    "`T5Block`'s clamp removes infs only",
                    help="Keep T5 in float32 or bfloat16, or load it with `torch_dtype=torch.float16`, "
                         "which keeps `wo` in float32",
                )
                continue
            if not whole_module:
                continue
            setting = self._mixed_precision(ctx, call)
            if setting is not None:
                node, spelling = setting
                named = ", ".join(self._describe(ctx, vocab, m) for m in t5_models)
                yield ctx.report(
                    node,
                    f"{spelling} runs the T5 v1.1-architecture model {named} in float16: autocast computes every "
                    "linear layer, `wo` included, in float16, T5's feed-forward activations "
                    "overflow it, and the loss turns NaN (transformers only clamps infs in "
                    "`T5Block`)",
                    help="Use bf16 (`bf16=True`, `precision=\"bf16-mixed\"`) on hardware that has it, "
                         "else train in float32",
                )

    @staticmethod
    def _describe(ctx: Context, vocab: Vocab, model) -> str:
        names = sorted(n for n in vocab.checkpoints(model.node.value, model.node) if n)
        return f"`{model.target}`" + (f" ({', '.join(names)})" if names else "")

    @staticmethod
    def _cast(ctx: Context, call: cst.Call) -> Optional[Tuple[cst.BaseExpression, str]]:
        """``m.half()`` / ``m.to(torch.float16)`` / ``m.to(dtype=torch.float16)``."""
        func = call.func
        if not isinstance(func, cst.Attribute) or ctx.names.resolve(func):
            return None
        if func.attr.value == "half" and not call.args:
            return func.value, ".half()"
        if func.attr.value == "to":
            keywords = _keywords(call)
            positional = [a.value for a in call.args if a.keyword is None and not a.star]
            dtype = keywords["dtype"].value if "dtype" in keywords else None
            if dtype is None and positional and _is_fp16_dtype(ctx, positional[-1]):
                dtype = positional[-1]
            if dtype is not None and _is_fp16_dtype(ctx, dtype):
                return func.value, f".to({ctx.code(dtype)})"
        return None

    @staticmethod
    def _mixed_precision(ctx: Context, call: cst.Call) -> Optional[Tuple[cst.CSTNode, str]]:
        names = ctx.names.resolve(call.func)
        keywords = _keywords(call)
        if names & set(_ARGUMENTS) or any(n.startswith("trl.") and n.endswith("Config") for n in names):
            for flag in _FP16_FLAGS:
                if flag in keywords and _true(keywords[flag].value):
                    return keywords[flag], f"`{flag}=True`"
        if names & _LIGHTNING_TRAINERS and "precision" in keywords:
            value = keywords["precision"].value
            text = string_value(value) if string_value(value) is not None else (
                value.value if isinstance(value, cst.Integer) else None)
            if text in _LIGHTNING_FP16:
                return keywords["precision"], f"`precision={ctx.code(value)}`"
        if "accelerate.Accelerator" in names:
            value = keywords.get("mixed_precision")
            if value is not None and string_value(value.value) == "fp16":
                return value, '`mixed_precision="fp16"`'
        if names & (_AUTOCAST | _CUDA_AUTOCAST):
            dtype = keywords["dtype"].value if "dtype" in keywords else None
            if dtype is not None:
                return (call, f"`{ctx.code(call)}`") if _is_fp16_dtype(ctx, dtype) else None
            if names & _CUDA_AUTOCAST:
                return call, f"`{ctx.code(call)}` (float16 by default)"
            device = keywords["device_type"].value if "device_type" in keywords else (
                call.args[0].value if call.args and call.args[0].keyword is None else None)
            if string_value(device) == "cuda":
                return call, f"`{ctx.code(call)}` (float16 by default on CUDA)"
        return None
