from __future__ import annotations

import re
from typing import Iterator, List, Optional

import libcst as cst

from mllint.analysis.hf import HfFacts, PadAssignment
from mllint.analysis.names import string_value
from mllint.analysis.vocab import Vocab
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Edit, Fix, Severity
from mllint.core.rule import Invalid, Option, Rule, Valid

# Checkpoint families whose tokenizers ship without a pad token (GPT-2, Llama 1-3, Mistral/Mixtral,
# Falcon, GPT-NeoX/Pythia, GPT-J, Phi-2): trl <= 0.15 sets their pad token to EOS. OPT, Gemma,
# BLOOM and T5 have one.
_PADLESS_CHECKPOINT = re.compile(r"gpt2|llama|mistral|mixtral|falcon|pythia|gpt-neox|gpt-j|phi-2", re.IGNORECASE)
_MODEL_LOADER_HINTS = ("ForCausalLM", "AutoModel", "ForConditionalGeneration", "LMHeadModel")


class PadTokenIsEos(Rule):
    """## What it does
    Checks for a tokenizer whose pad token is set to its EOS token, in a module that also masks
    labels *by value*: `DataCollatorForLanguageModeling(mlm=False)`, trl's
    `DataCollatorForCompletionOnlyLM`, an `SFTTrainer` of trl < 0.16 without its own collator,
    or a hand-written `labels[labels == tokenizer.pad_token_id] = -100`.

    Every spelling is recognised: `tok.pad_token = tok.eos_token`,
    `tok.pad_token_id = tok.eos_token_id`, `tok.add_special_tokens({"pad_token": tok.eos_token})`,
    `setattr(tok, "pad_token", tok.eos_token)`, `AutoTokenizer.from_pretrained(...,
    pad_token=...)` with the EOS token, and the "only if missing" idioms
    (`if tok.pad_token is None: ...`, `tok.eos_token if ... else ...`).

    ## Why is this bad?
    `DataCollatorForLanguageModeling` with `mlm=False` builds the labels as a copy of
    `input_ids` and sets every position *whose value equals* `tokenizer.pad_token_id` to -100
    (transformers `data/data_collator.py`, `DataCollatorForLanguageModeling.torch_call`:
    `labels[labels == self.tokenizer.pad_token_id] = -100`; the same in every version from 4.30
    to 5.23, and in the numpy path). When pad and EOS are the same token, every real EOS label
    is masked as well. The loss never contains an EOS target, so the fine-tuned model never
    learns to stop and generates until `max_new_tokens`, although training "converged".

    `DataCollatorForCompletionOnlyLM` (trl 0.15-0.19, `trl/trainer/utils.py`) calls that
    collator first and inherits the masking. trl < 0.16 `SFTTrainer` used it as its default
    collator (0.15.2 `trainer/sft_trainer.py`, `SFTTrainer.__init__`: `if data_collator is None:
    data_collator = DataCollatorForLanguageModeling(tokenizer=processing_class, mlm=False)`), and
    when it was given no tokenizer it loaded one itself and set `pad_token = eos_token` when the
    checkpoint had none (`if processing_class is None: ... processing_class.pad_token =
    processing_class.eos_token`). So with trl < 0.16 an `SFTTrainer(...)` without
    `processing_class=`/`tokenizer=` and without `data_collator=` is reported at the call even
    though the module never sets the pad token, when its model's checkpoint is one whose
    tokenizer has no pad token (GPT-2, Llama, Mistral/Mixtral, Falcon, Pythia/GPT-NeoX, GPT-J,
    Phi-2; not OPT, Gemma or BLOOM, which ship one). (A tokenizer passed without a pad token is not
    touched by trl 0.15: padding then fails loudly, nothing to report.) Since trl 0.16,
    `SFTTrainer` leaves the pad token alone and its own collator
    (`trl.trainer.sft_trainer.DataCollatorForLanguageModeling(pad_token_id)`, `torch_call`) pads
    labels with -100 by *position*, so pad = EOS no longer hides EOS labels: both `SFTTrainer`
    cases are reported only when the target trl version (`target-versions` or a project pin) is
    below 0.16, and the message names that version and where it came from.

    The rule stays silent where pad = EOS is harmless: inference-only code and
    `generate(pad_token_id=tok.eos_token_id)` (no label masking), preference trainers
    (`DPOTrainer`, `ORPOTrainer`, `KTOTrainer` mask by attention/completion masks), and the
    `group_texts` recipe that packs examples into fixed blocks with no padding and no EOS.

    ## Example
    ```python
    tokenizer = AutoTokenizer.from_pretrained("mistralai/Mistral-7B-v0.1", add_eos_token=True)
    tokenizer.pad_token = tokenizer.eos_token
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    ```

    ## Use instead
    ```python
    tokenizer = AutoTokenizer.from_pretrained("mistralai/Mistral-7B-v0.1", add_eos_token=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    model.resize_token_embeddings(len(tokenizer))
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    ```
    or keep pad = EOS and use a collator that pads labels by position, such as
    `DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)` with labels built during
    preprocessing.

    ## Fix safety
    The fix is unsafe: it adds a new `<pad>` special token (set the `pad-token` option to use
    another) and inserts `model.resize_token_embeddings(len(tokenizer))` after the model is
    loaded in the same block, which changes the vocabulary size of the saved model and
    tokenizer. When no model loaded with `from_pretrained` is found in the same block (and the
    module does not resize embeddings already), the fix is only displayed: a new token without
    a resized embedding matrix would fail with an index error.

    ## References
    - transformers `data/data_collator.py`, `DataCollatorForLanguageModeling.torch_call`
    - trl `trainer/sft_trainer.py` (0.15.2 default collator; 0.16 position-based collator)
    - https://github.com/huggingface/transformers/issues/23530
    - https://github.com/huggingface/trl/issues/976
    """

    code = "MLL101"
    name = "pad-token-is-eos"
    summary = "pad token set to the EOS token while labels are masked by pad value"
    severity = Severity.ERROR
    tags = ("correctness", "transformers", "trl")
    triggers = (("pad_token", "SFTTrainer"), ("DataCollatorFor", "SFTTrainer", "100"))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (
        ("assign:pad_token", "assign:pad_token_id", "string:pad_token", "string:pad_token_id",
         "keyword:pad_token", "import:trl & name:SFTTrainer"),
        ("name:eos_token", "name:eos_token_id", "import:trl & name:SFTTrainer"),
        ("import:transformers & name:DataCollatorForLanguageModeling",
         "import:trl & name:DataCollatorForCompletionOnlyLM", "import:trl & name:SFTTrainer",
         "number:100 & name:pad_token_id", "number:100 & name:pad_id"),
    )
    premise = {"transformers": ">=2.0"}
    options = (
        Option("pad-token", "<pad>", "the new pad token the fix adds"),
        Option("value-masking-collators", [],
               "qualified names of your own collators that mask labels equal to the pad id"),
    )
    VALID = (
        # Inference only: no label masking anywhere.
        Valid("""
            from transformers import AutoTokenizer, AutoModelForCausalLM
            tokenizer = AutoTokenizer.from_pretrained("gpt2")
            tokenizer.pad_token = tokenizer.eos_token
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            out = model.generate(**tokenizer(["a", "bb"], padding=True, return_tensors="pt"))
            """),
        # A distinct pad token.
        Valid("""
            from transformers import DataCollatorForLanguageModeling
            tokenizer.pad_token = tokenizer.unk_token
            collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
            """),
        # Masked LM (mlm defaults to True): labels are not built from pad values.
        Valid("""
            from transformers import DataCollatorForLanguageModeling
            tokenizer.pad_token = tokenizer.eos_token
            collator = DataCollatorForLanguageModeling(tokenizer=tokenizer)
            """),
        # generate(pad_token_id=eos) for open-ended sampling is not an assignment.
        Valid("""
            from transformers import DataCollatorForLanguageModeling
            collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
            model.generate(input_ids, pad_token_id=tokenizer.eos_token_id)
            """),
        # Setting the *model config's* pad id does not change the collator's comparison.
        Valid("""
            from transformers import DataCollatorForLanguageModeling
            model.config.pad_token_id = tokenizer.eos_token_id
            collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
            """),
        # Position-based label padding.
        Valid("""
            from transformers import DataCollatorForSeq2Seq
            tokenizer.pad_token = tokenizer.eos_token
            collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
            """),
        # Preference tuning masks with completion masks.
        Valid("""
            from trl import DPOTrainer
            tokenizer.pad_token = tokenizer.eos_token
            trainer = DPOTrainer(model=model, args=args, processing_class=tokenizer)
            """),
        # trl >= 0.16 SFTTrainer pads labels by position.
        Valid("""
            from trl import SFTTrainer
            tokenizer.pad_token = tokenizer.eos_token
            trainer = SFTTrainer(model=model, train_dataset=ds, processing_class=tokenizer)
            """, settings={"target_versions": {"trl": "0.16.1"}}),
        # trl >= 0.16 loads the tokenizer without touching its pad token.
        Valid("""
            from trl import SFTConfig, SFTTrainer
            trainer = SFTTrainer(model="Qwen/Qwen2.5-0.5B", args=SFTConfig("out"), train_dataset=ds)
            """, settings={"target_versions": {"trl": "0.16.1"}}),
        # Unpinned trl is assumed to be the latest (1.16.0): nothing to report.
        Valid("""
            from trl import SFTTrainer
            trainer = SFTTrainer(model="facebook/opt-350m", train_dataset=ds)
            """),
        # trl 0.15 with the user's own tokenizer: trl does not set its pad token.
        Valid("""
            from transformers import AutoTokenizer
            from trl import SFTTrainer
            tokenizer = AutoTokenizer.from_pretrained("facebook/opt-350m")
            trainer = SFTTrainer(model="facebook/opt-350m", train_dataset=ds, processing_class=tokenizer)
            """, settings={"target_versions": {"trl": "0.15.2"}}),
        # trl 0.15 without a tokenizer but with a position-padding collator.
        Valid("""
            from transformers import DataCollatorForSeq2Seq
            from trl import SFTTrainer
            trainer = SFTTrainer(model=model, train_dataset=ds,
                                 data_collator=DataCollatorForSeq2Seq(tok, label_pad_token_id=-100))
            """, settings={"target_versions": {"trl": "0.15.2"}}),
        # trl 0.15 without a tokenizer, but Gemma's tokenizer has a pad token: trl keeps it.
        Valid("""
            from trl import SFTTrainer
            from transformers import AutoModelForCausalLM
            model_id = "google/gemma-7b"
            model = AutoModelForCausalLM.from_pretrained(model_id)
            trainer = SFTTrainer(model=model, train_dataset=data["train"], formatting_func=fmt)
            """, settings={"target_versions": {"trl": "0.7.10"}}),
        # trl 0.15 with everything passed through **kwargs: cannot tell.
        Valid("""
            from trl import SFTTrainer
            trainer = SFTTrainer(model=model, **trainer_kwargs)
            """, settings={"target_versions": {"trl": "0.14.0"}}),
        # An EOS pad that a later assignment replaces.
        Valid("""
            from transformers import DataCollatorForLanguageModeling
            tokenizer.pad_token = tokenizer.eos_token
            tokenizer.pad_token = "<|finetune_right_pad_id|>"
            collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
            """),
        # Full-length chunks only (HF course ch. 7 §6): nothing is padded, no EOS in the data;
        # `eos_token_id=` configures the model and puts no EOS into the labels.
        Valid("""
            from transformers import AutoConfig, DataCollatorForLanguageModeling
            def tokenize(element):
                outputs = tokenizer(element["content"], truncation=True, max_length=128,
                                    return_overflowing_tokens=True, return_length=True)
                return {"input_ids": [ids for n, ids in zip(outputs["length"], outputs["input_ids"]) if n == 128]}
            config = AutoConfig.from_pretrained("gpt2", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
            tokenizer.pad_token = tokenizer.eos_token
            data_collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
            """),
        # A collator of another library with the same class name.
        Valid("""
            from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
            tokenizer.pad_token = tokenizer.eos_token
            collator = DataCollatorForLanguageModeling(tokenizer.pad_token_id)
            """),
        # Packed fixed-size blocks with no EOS: nothing is padded, no label equals the pad id.
        Valid("""
            from transformers import DataCollatorForLanguageModeling
            tokenizer.pad_token = tokenizer.eos_token
            def group_texts(examples):
                concatenated = {k: sum(examples[k], []) for k in examples.keys()}
                return concatenated
            collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
            """),
    )
    INVALID = (
        Invalid(
            """
            from transformers import AutoTokenizer, AutoModelForCausalLM, DataCollatorForLanguageModeling
            tokenizer = AutoTokenizer.from_pretrained("mistralai/Mistral-7B-v0.1", add_eos_token=True)
            tokenizer.pad_token = tokenizer.eos_token
            model = AutoModelForCausalLM.from_pretrained("mistralai/Mistral-7B-v0.1")
            collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
            """,
            line=3,
            message="DataCollatorForLanguageModeling(mlm=False)",
            fix="""
            from transformers import AutoTokenizer, AutoModelForCausalLM, DataCollatorForLanguageModeling
            tokenizer = AutoTokenizer.from_pretrained("mistralai/Mistral-7B-v0.1", add_eos_token=True)
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            model = AutoModelForCausalLM.from_pretrained("mistralai/Mistral-7B-v0.1")
            model.resize_token_embeddings(len(tokenizer))
            collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
            """,
            applicability=Applicability.UNSAFE,
        ),
        Invalid(
            """
            import transformers as tf
            class Module:
                def setup(self):
                    if self.tokenizer.pad_token is None:
                        self.tokenizer.pad_token_id = self.tokenizer.eos_token_id
                    self.collator = tf.DataCollatorForLanguageModeling(self.tokenizer, False)
            """,
            line=5,
            applicability=Applicability.DISPLAY_ONLY,
        ),
        Invalid(
            """
            from trl import DataCollatorForCompletionOnlyLM
            tokenizer.add_special_tokens({"pad_token": tokenizer.eos_token})
            collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tokenizer)
            """,
            line=2,
            message="DataCollatorForCompletionOnlyLM",
        ),
        Invalid(
            """
            setattr(tokenizer, "pad_token", tokenizer.eos_token)
            def collate(batch):
                labels = batch["input_ids"].clone()
                labels[labels == tokenizer.pad_token_id] = -100
                return labels
            """,
            line=1,
            message="hand-written",
        ),
        Invalid(
            """
            from transformers import AutoTokenizer, DataCollatorForLanguageModeling
            tok = AutoTokenizer.from_pretrained("m", pad_token="</s>", eos_token="</s>")
            collator = DataCollatorForLanguageModeling(tokenizer=tok, mlm=False)
            """,
            line=2,
        ),
        Invalid(
            """
            from trl import SFTTrainer
            tokenizer.pad_token = tokenizer.eos_token
            trainer = SFTTrainer(model=model, train_dataset=ds, tokenizer=tokenizer)
            """,
            line=2,
            message="trl 0.15.2",
            settings={"target_versions": {"trl": "0.15.2"}},
        ),
        # trl <= 0.15 loads the tokenizer itself and sets pad = EOS.
        Invalid(
            """
            from datasets import load_dataset
            from trl import SFTConfig, SFTTrainer
            trainer = SFTTrainer(
                model="mistralai/Mistral-7B-v0.1",
                args=SFTConfig(output_dir="out", packing=True),
                train_dataset=load_dataset("imdb", split="train"),
            )
            """,
            line=3,
            message="with trl 0.15.2 (requirements.txt:3), `SFTTrainer` given no tokenizer",
            settings={"target_versions": {"trl": "0.15.2"},
                      "version_sources": {"trl": "requirements.txt:3"}},
        ),
        Invalid(
            """
            import trl
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")
            trainer = trl.SFTTrainer(model, training_args, None, train_ds)
            """,
            line=4,
            message="trl 0.11.4",
            settings={"target_versions": {"trl": "0.11.4"}},
        ),
        Invalid(
            """
            from mytools import PadMaskingCollator
            tokenizer.pad_token = tokenizer.eos_token
            collator = PadMaskingCollator(tokenizer)
            """,
            line=2,
            settings={"rule_options": {"MLL101": {"value-masking-collators": ["mytools.PadMaskingCollator"]}}},
        ),
    )

    def trigger_groups(self):
        pads, maskers = self.triggers
        extra = tuple(name.rsplit(".", 1)[-1] for name in self.config["value-masking-collators"])
        return (pads, maskers + extra)

    def requirement_groups(self):
        pads, eos, maskers = self.requires
        extra = tuple("name:" + name.rsplit(".", 1)[-1] for name in self.config["value-masking-collators"])
        return (pads, eos, maskers + extra)

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        facts = ctx.get(HfFacts)
        assignments = facts.eos_pad_assignments()
        if not assignments:
            for call in facts.trl_eos_pads():
                checkpoint = self._padless_checkpoint(ctx, call)
                if checkpoint is None:
                    continue
                yield ctx.report(
                    call,
                    f"with {ctx.version_fact('trl')}, `SFTTrainer` given no tokenizer loads the one of "
                    f"`{checkpoint}`, which has no pad token, sets `pad_token = eos_token` itself, and "
                    "collates with `DataCollatorForLanguageModeling(mlm=False)`, which sets every "
                    "label equal to `pad_token_id` to -100: the EOS labels are masked too, so the "
                    "model never learns to stop",
                    help=("Pass a tokenizer with a distinct pad token (`processing_class=`), a collator "
                          "that pads labels by position, or upgrade to trl >= 0.16"),
                )
            return
        masking = facts.value_label_masking(self.config["value-masking-collators"])
        if not masking:
            return
        if facts.packs_without_eos() and all("DataCollatorForLanguageModeling(" in m.description
                                             for m in masking):
            return
        evidence = masking[0]
        row = ctx.locator.location(ctx.span(evidence.node)[0]).row
        for pad in assignments:
            tokenizer = pad.receiver or "tokenizer"
            yield ctx.report(
                pad.node,
                f"pad token is the EOS token, and {evidence.description} (line {row}) sets every "
                f"label equal to `pad_token_id` to -100: the EOS labels are masked too, so the "
                f"model never learns to stop",
                fix=self._fix(ctx, pad, facts),
                help=(f"Give `{tokenizer}` a distinct pad token (e.g. "
                      f"`{tokenizer}.add_special_tokens({{\"pad_token\": \"<pad>\"}})` and resize the "
                      "model's embeddings), or pad labels by position (`DataCollatorForSeq2Seq` "
                      "with `label_pad_token_id=-100`)"),
            )

    @staticmethod
    def _padless_checkpoint(ctx: Context, call: cst.Call) -> Optional[str]:
        """The checkpoint an ``SFTTrainer``'s ``model`` comes from, when every candidate names a
        family whose tokenizer has no pad token."""
        model = next((a.value for a in call.args if a.keyword is not None and a.keyword.value == "model"),
                     call.args[0].value if call.args and call.args[0].keyword is None else None)
        if model is None:
            return None
        name = string_value(model)
        vocab = ctx.get(Vocab)
        names = {name} if name is not None else vocab.checkpoints(model, call)
        if None in names or not all(_PADLESS_CHECKPOINT.search(n) for n in names):
            return None
        return ", ".join(sorted(names))

    # -- fix ---------------------------------------------------------------------------------
    def _fix(self, ctx: Context, pad: PadAssignment, facts: HfFacts) -> Optional[Fix]:
        literal = '"' + self.config["pad-token"].replace("\\", "\\\\").replace('"', '\\"') + '"'
        edits: List[Edit] = []
        if pad.spelling in ("add_special_tokens", "from_pretrained"):
            edits.append(ctx.replace(pad.value, literal))
        elif pad.spelling == "attribute" and pad.receiver and isinstance(pad.node, cst.Assign):
            edits.append(ctx.replace(pad.node, f'{pad.receiver}.add_special_tokens({{"pad_token": {literal}}})'))
        elif pad.spelling == "setattr":
            edits.append(ctx.replace(pad.node, f'{pad.receiver}.add_special_tokens({{"pad_token": {literal}}})'))
        else:
            return None
        tokenizer = pad.receiver
        message = f"Add a distinct `{self.config['pad-token']}` pad token"
        if ".resize_token_embeddings(" in ctx.source:
            return ctx.fix(message, Applicability.UNSAFE, *edits)
        resize = self._resize_edit(ctx, pad, tokenizer)
        if resize is None:
            return ctx.fix(message + " (then resize the model's embeddings)", Applicability.DISPLAY_ONLY, *edits)
        return ctx.fix(message + " and resize the model's embeddings", Applicability.UNSAFE, *edits, resize)

    def _resize_edit(self, ctx: Context, pad: PadAssignment, tokenizer: str) -> Optional[Edit]:
        """Insert ``model.resize_token_embeddings(len(tok))`` after both the pad statement and
        the model's loading, when both are statements of the same block."""
        statement = pad.statement
        if statement is None or not tokenizer:
            return None
        block = ctx.parent(statement)
        for node in ctx.nodes(cst.Assign):
            if len(node.targets) != 1 or not isinstance(node.targets[0].target, cst.Name):
                continue
            value = node.value
            if not (isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute)
                    and value.func.attr.value == "from_pretrained"):
                continue
            names = ctx.names.resolve(value.func.value)
            if not any(n.startswith("transformers.") and any(h in n for h in _MODEL_LOADER_HINTS)
                       for n in names):
                continue
            model_statement = ctx.parent(node)
            if not isinstance(model_statement, cst.SimpleStatementLine) or ctx.parent(model_statement) is not block:
                continue
            later = max((statement, model_statement), key=ctx.order)
            model = node.targets[0].target.value
            return ctx.insert_statement_after(later, f"{model}.resize_token_embeddings(len({tokenizer}))")
        return None
