from __future__ import annotations

from typing import Iterator, Optional

import libcst as cst

from mllint.analysis.hf import DECODER_ONLY, families, is_hf_model
from mllint.analysis.instances import Instances
from mllint.analysis.labels import Labels
from mllint.core.context import Context
from mllint.core.diagnostic import Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid

_TRAINERS = ("transformers.Trainer", "transformers.Seq2SeqTrainer", "trl.SFTTrainer")


class LabelsShiftedTwice(Rule):
    """## What it does
    Checks for labels shifted by hand before they reach a Hugging Face causal language model
    (`*ForCausalLM`, `*LMHeadModel`, `AutoModelForCausalLM`, and peft wrappers of them):

    - a model call with `labels=` one token ahead of its `input_ids`: `model(input_ids=x[:, :-1],
      labels=x[:, 1:])`, `labels=torch.roll(x, -1, dims=1)` with `input_ids=x`,
      `x = data[i:i+n]` / `y = data[i+1:i+1+n]`;
    - a dataset that stores such a pair (`{"input_ids": ids[:-1], "labels": ids[1:]}`) in a
      module that trains a causal LM with a `Trainer`/`SFTTrainer` or `model(**batch)`.

    Home-grown models (not loaded from transformers), encoder-decoder models, and code that
    computes the loss itself from the logits (no `labels=`) are not reported; neither is a call
    that passes `shift_labels=`.

    ## Why is this bad?
    Hugging Face causal LMs shift the labels themselves. In transformers 4.46 and later the
    model's loss is `ForCausalLMLoss` (`loss/loss_utils.py`): it pads the labels by one
    `ignore_index` and uses `labels[..., 1:]` unless `shift_labels` is passed (4.57.6, 5.23.0);
    before, each model's `forward` did `shift_labels = labels[..., 1:]` against
    `logits[..., :-1, :]` (4.30, `LlamaForCausalLM.forward`). Labels already shifted by the
    caller are shifted a second time, so position *t* is trained to predict token *t + 2*. The
    loss still goes down, the model generates garbage that skips every other token.

    ## Example
    ```python
    ids = batch["input_ids"]
    out = model(input_ids=ids[:, :-1], labels=ids[:, 1:])
    ```

    ## Use instead
    ```python
    ids = batch["input_ids"]
    out = model(input_ids=ids, labels=ids.clone())  # the model shifts internally
    ```

    ## Fix safety
    There is no fix: the attention mask and any -100 masking must follow the un-shifted
    tensors, which only the author can check.

    ## References
    - transformers `loss/loss_utils.py`, `ForCausalLMLoss` (4.46, 4.57.6, 5.23.0)
    - transformers `models/llama/modeling_llama.py`, `LlamaForCausalLM.forward` (4.30)
    - https://github.com/huggingface/transformers/issues/32944
    """

    code = "MLL103"
    name = "labels-shifted-twice"
    summary = "labels shifted by hand for a Hugging Face causal LM, which shifts them again"
    severity = Severity.ERROR
    tags = ("correctness", "transformers")
    triggers = (("transformers",), ("labels",), ("1",))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (
        ("import:transformers", "import:peft"),
        ("keyword:labels", "string:labels"),
        ("number:1",),
    )
    premise = {"transformers": ">=4.0"}
    VALID = (
        # The model shifts: same tensor for both.
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            for batch in loader:
                ids = batch["input_ids"]
                model(input_ids=ids, attention_mask=batch["attention_mask"], labels=ids).loss.backward()
            """),
        # A home-grown GPT that does not shift.
        Valid("""
            import transformers
            from model import GPT
            model = GPT(config)
            for x in loader:
                logits, loss = model(x[:, :-1], labels=x[:, 1:])
            """),
        # The loss computed from the logits with shifted targets, no labels passed.
        Valid("""
            import torch.nn.functional as F
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            for x in loader:
                logits = model(input_ids=x[:, :-1]).logits
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
            """),
        # Encoder-decoder models take the whole target as labels, not a shifted copy of the input.
        Valid("""
            from transformers import T5ForConditionalGeneration
            model = T5ForConditionalGeneration.from_pretrained("t5-small")
            out = model(input_ids=x[:, :-1], labels=x[:, 1:])
            """),
        # Pre-shifted labels handed over as shift_labels (transformers >= 4.5x ForCausalLMLoss).
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            out = model(input_ids=x[:, :-1], labels=x[:, :-1], shift_labels=x[:, 1:])
            """),
    )
    INVALID = (
        Invalid(
            """
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")
            for batch in loader:
                input_ids = batch["input_ids"].to(device)
                labels = input_ids[:, 1:].clone()
                out = model(input_ids=input_ids[:, :-1], labels=labels)
                out.loss.backward()
            """,
            line=7,
            message="`input_ids`",
        ),
        # nanoGPT-style windows into one token stream, fed to GPT-2.
        Invalid(
            """
            from transformers import GPT2LMHeadModel
            model = GPT2LMHeadModel.from_pretrained("gpt2")
            def step(data, i, n):
                x = data[i:i + n]
                y = data[i + 1:i + 1 + n]
                return model(x, labels=y).loss
            """,
            line=6,
        ),
        # A Dataset that stores the shifted pair, trained with the HF Trainer.
        Invalid(
            """
            import torch
            from torch.utils.data import Dataset
            from transformers import AutoModelForCausalLM, Trainer
            class Chunks(Dataset):
                def __getitem__(self, i):
                    ids = torch.tensor(self.blocks[i])
                    return {"input_ids": ids[:-1], "labels": ids[1:]}
            model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2-0.5B")
            Trainer(model=model, train_dataset=Chunks(blocks)).train()
            """,
            line=7,
            message="`AutoModelForCausalLM`",
        ),
        # Through a peft wrapper, labels rolled left.
        Invalid(
            """
            import torch
            from peft import get_peft_model
            from transformers import AutoModelForCausalLM
            base = AutoModelForCausalLM.from_pretrained("mistralai/Mistral-7B-v0.1")
            model = get_peft_model(base, lora_config)
            ids = batch["input_ids"]
            loss = model(input_ids=ids, labels=torch.roll(ids, shifts=-1, dims=1)).loss
            """,
            line=7,
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        labels = ctx.get(Labels)
        instances = ctx.get(Instances)
        trained: Optional[str] = None
        for call in ctx.nodes(cst.Call):
            keywords = {a.keyword.value: a for a in call.args if a.keyword is not None}
            kind = self._causal_lm(instances, call)
            if kind is None:
                continue
            if any(a.star == "**" for a in call.args) and trained is None:
                trained = kind
            if "labels" not in keywords or "shift_labels" in keywords:
                continue
            positional = [a for a in call.args if a.keyword is None and not a.star]
            inputs = keywords["input_ids"].value if "input_ids" in keywords else (
                positional[0].value if positional else None)
            if inputs is None:
                continue
            root = labels.shifted_pair(inputs, keywords["labels"].value)
            if root is not None:
                yield self._report(ctx, keywords["labels"], root, kind)
        trained = trained or self._trainer_model(ctx, instances)
        if trained is None:
            return
        for write in labels.writes():
            inputs = labels.inputs_of(write)
            root = labels.shifted_pair(inputs, write.value) if inputs is not None else None
            if root is not None:
                yield self._report(ctx, write.node, root, trained)

    @staticmethod
    def _causal_lm(instances: Instances, call: cst.Call) -> Optional[str]:
        """The causal-LM class the callee is an instance of (``model(...)``, ``model.forward``)."""
        func = call.func
        if isinstance(func, cst.Attribute) and func.attr.value == "forward":
            func = func.value
        if not isinstance(func, (cst.Name, cst.Attribute)):
            return None
        kinds = instances.kinds(func, call)
        if is_hf_model(kinds) and families(kinds) == {DECODER_ONLY}:
            return sorted(kinds)[0].rsplit(".", 1)[-1]
        return None

    @staticmethod
    def _trainer_model(ctx: Context, instances: Instances) -> Optional[str]:
        """The causal-LM class a ``Trainer``/``SFTTrainer`` of the module trains."""
        for call in ctx.nodes(cst.Call):
            if not ctx.names.resolve(call.func) & set(_TRAINERS):
                continue
            model = next((a.value for a in call.args if a.keyword is not None and a.keyword.value == "model"),
                         call.args[0].value if call.args and call.args[0].keyword is None else None)
            if model is None:
                continue
            kinds = instances.kinds(model, call)
            if is_hf_model(kinds) and families(kinds) == {DECODER_ONLY}:
                return sorted(kinds)[0].rsplit(".", 1)[-1]
        return None

    @staticmethod
    def _report(ctx: Context, node: cst.CSTNode, root: str, kind: str) -> Diagnostic:
        return ctx.report(
            node,
            f"labels are `{root}` shifted left by one token, but `{kind}` shifts labels again inside its "
            f"loss (`ForCausalLMLoss` uses `labels[..., 1:]`): each position is trained to predict the "
            f"token two steps ahead",
            help=f"Pass the un-shifted tensor as both `input_ids` and `labels` (e.g. `labels={root}.clone()`)",
        )
