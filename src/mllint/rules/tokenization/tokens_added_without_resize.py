from __future__ import annotations

import re
from typing import Iterator, List, Optional

import libcst as cst

from mllint.analysis.batches import Batches
from mllint.analysis.hf import DECODER_ONLY, families
from mllint.analysis.vocab import ModelBinding, TokenAddition, Vocab
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Fix, Severity
from mllint.core.rule import Invalid, Rule, Valid

# Tokens most vocabularies that would meet them already have (adding them adds nothing).
# ``<|padding|>`` is id 1 of GPT-NeoX/Pythia's vocabulary, ``<|finetune_right_pad_id|>`` a reserved
# Llama 3.1 token.
_COMMON_TOKENS = frozenset({"</s>", "<s>", "<unk>", "<|endoftext|>", "<|end_of_text|>", "<|padding|>",
                            "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>"})
_RESERVED = re.compile(r"^<\|reserved_special_token_\d+\|>$")
# Special tokens of BERT-style ([PAD]) and SentencePiece/RoBERTa/T5/BART-style (<pad>) vocabularies:
# new only for decoder-only models (GPT-2, Llama, Mistral ... have neither).
_FAMILY_TOKENS = frozenset({"[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "<pad>", "<mask>"})


# Decoder-only families whose vocabularies have neither ``[PAD]`` nor ``<pad>``, by class stem and by
# checkpoint name (for auto and task classes such as ``GPT2ForSequenceClassification``).
# (OPT, BLOOM and Gemma have a ``<pad>`` token.)
_GPT_STYLE_CLASS = re.compile(r"^(GPT2|GPTNeo|GPTNeoX|GPTJ|Llama|Mistral|Mixtral|Falcon|Phi)[A-Z]")
_GPT_STYLE_CHECKPOINT = re.compile(r"gpt2|gpt-neo|gpt-j|llama|mistral|mixtral|falcon|pythia", re.IGNORECASE)


def _maybe_existing(token: str, gpt_style: bool) -> bool:
    if token in _COMMON_TOKENS or _RESERVED.match(token):
        return True
    return token in _FAMILY_TOKENS and not gpt_style


def _gpt_style(vocab: Vocab, model: ModelBinding) -> bool:
    """A decoder-only vocabulary: a causal-LM class, a GPT-style class stem, or checkpoints that
    all name a GPT-style family."""
    if families(model.kinds) == frozenset({DECODER_ONLY}):
        return True
    if all(_GPT_STYLE_CLASS.match(k.rsplit(".", 1)[-1]) for k in model.kinds):
        return True
    names = vocab.checkpoints(model.node.value, model.node)
    return None not in names and all(_GPT_STYLE_CHECKPOINT.search(n) for n in names)


class TokensAddedWithoutResize(Rule):
    """## What it does
    Checks for new tokens added to a tokenizer (`tok.add_tokens([...])`,
    `tok.add_special_tokens({"pad_token": "[PAD]"})`, `{"additional_special_tokens": [...]}`) in a
    module that makes a Hugging Face model but never calls
    `model.resize_token_embeddings(len(tok))` (any spelling, `pad_to_multiple_of=` too) after
    the addition.

    Tokens the tokenizer already has add nothing and are left alone:
    `add_special_tokens({"pad_token": tok.eos_token})` (pad = EOS is MLL101's business),
    `tok.unk_token`, `tok.convert_ids_to_tokens(0)`, common existing tokens such as `"</s>"`,
    `"<unk>"`, Pythia's `"<|padding|>"` or Llama 3's `"<|finetune_right_pad_id|>"`, and
    `"<pad>"`/`"[PAD]"` unless every model of the module has a GPT-style (decoder-only)
    vocabulary: a causal-LM class, `GPT2ForSequenceClassification`-like classes, or a
    GPT-2/Llama/Mistral/Falcon/Pythia checkpoint. Assigning `tok.pad_token = "<pad>"` is not an addition
    (the setter only records the string), so it is not reported here either.

    The rule is silent when the module has no model, when a resize may run later (a call later
    in the source, in another function, a guarded `if num_added: model.resize_token_embeddings(...)`,
    a helper whose name says it resizes, or trl's `setup_chat_format` / `clone_chat_template`,
    which resize themselves), when the model is made with `vocab_size=len(tok)`, and when the
    only new token is a pad token that nothing pads with (no tokenizer call with `padding=`, no
    `tok.pad`, no transformers/trl collator, no trainer given the tokenizer): its id then never
    reaches the model.

    ## Why is this bad?
    `add_tokens`/`add_special_tokens` append tokens that are not in the vocabulary yet with ids
    `len(tokenizer)`, `len(tokenizer) + 1`, ... and return how many they added (transformers
    `tokenization_utils_base.py`, `PreTrainedTokenizerBase.add_special_tokens` ->
    `add_tokens` -> `_add_tokens`, 4.30 to 5.23; the docstring says to resize the model's
    embedding matrix). The model's embedding matrix keeps its rows until
    `PreTrainedModel.resize_token_embeddings(new_num_tokens, pad_to_multiple_of=None, ...)`
    (`modeling_utils.py`) grows it. The first batch that contains a new id (a `[PAD]` in every
    padded batch) indexes past the matrix: `IndexError: index out of range in self` on CPU,
    a device-side assert on CUDA.

    Some checkpoints ship more embedding rows than tokens (Qwen2, Phi-3, T5): a few new tokens
    then fit without a resize, and the rule may report code that runs. Resizing is still what
    makes the model's size match the tokenizer when both are saved.

    ## Example
    ```python
    tokenizer = AutoTokenizer.from_pretrained("gpt2")
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    model = AutoModelForCausalLM.from_pretrained("gpt2")
    ```

    ## Use instead
    ```python
    tokenizer = AutoTokenizer.from_pretrained("gpt2")
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    model = AutoModelForCausalLM.from_pretrained("gpt2")
    model.resize_token_embeddings(len(tokenizer))
    ```

    ## Fix safety
    The fix inserts `model.resize_token_embeddings(len(tokenizer))` after both the addition and
    the model's creation when they are statements of the same block and the module makes one
    model. It is unsafe: it changes the shape of the saved model (and shrinks the matrix of
    checkpoints that ship spare rows), and with peft the new rows are only saved when the
    embedding layer is trainable (`modules_to_save`). Without one model in the same block there
    is no fix.

    ## References
    - transformers `tokenization_utils_base.py`, `PreTrainedTokenizerBase.add_special_tokens`,
      `add_tokens`
    - transformers `modeling_utils.py`, `PreTrainedModel.resize_token_embeddings`
    - trl `models/utils.py` `setup_chat_format` (0.15-0.20), `chat_template_utils.py`
      `clone_chat_template` (1.16)
    - https://github.com/huggingface/transformers/issues/1062
    - https://github.com/huggingface/transformers/issues/11102
    """

    code = "MLL105"
    name = "tokens-added-without-resize"
    summary = "new tokens added to a tokenizer without resizing the model's embeddings"
    severity = Severity.ERROR
    tags = ("correctness", "transformers", "tokenizer")
    triggers = (("add_tokens", "add_special_tokens"),)
    requires = (("call:add_tokens", "call:add_special_tokens"),
                ("import:transformers", "import:peft", "import:trl"))
    premise = {"transformers": ">=2.0"}
    VALID = (
        # The pad token is the existing EOS token: nothing is added (MLL101's domain).
        Valid("""
            from transformers import AutoTokenizer, AutoModelForCausalLM
            tokenizer = AutoTokenizer.from_pretrained("gpt2")
            tokenizer.add_special_tokens({"pad_token": tokenizer.eos_token})
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            """),
        # Resized afterwards.
        Valid("""
            from transformers import AutoTokenizer, AutoModelForCausalLM
            tokenizer = AutoTokenizer.from_pretrained("gpt2")
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            tokenizer.add_special_tokens({"pad_token": "[PAD]"})
            model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
            """),
        # Guarded resize on the number of added tokens.
        Valid("""
            from transformers import AutoTokenizer, AutoModelForCausalLM
            tok = AutoTokenizer.from_pretrained("meta-llama/Llama-2-7b-hf")
            model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")
            num_added = tok.add_tokens(["<tool>", "</tool>"])
            if num_added:
                model.resize_token_embeddings(len(tok))
            """),
        # No model in the module: a tokenizer-preparation script.
        Valid("""
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained("gpt2")
            tok.add_tokens(["<x>"])
            tok.save_pretrained("out")
            """),
        # peft with a trainable embedding and a resize.
        Valid("""
            from peft import LoraConfig, get_peft_model
            from transformers import AutoTokenizer, AutoModelForCausalLM
            tokenizer = AutoTokenizer.from_pretrained("mistralai/Mistral-7B-v0.1")
            tokenizer.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|bot|>"]})
            model = AutoModelForCausalLM.from_pretrained("mistralai/Mistral-7B-v0.1")
            model.resize_token_embeddings(len(tokenizer))
            config = LoraConfig(modules_to_save=["embed_tokens", "lm_head"])
            model = get_peft_model(model, config)
            """),
        # trl's setup_chat_format adds the ChatML tokens and resizes.
        Valid("""
            from transformers import AutoTokenizer, AutoModelForCausalLM
            from trl import setup_chat_format
            tokenizer = AutoTokenizer.from_pretrained("facebook/opt-350m")
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            model = AutoModelForCausalLM.from_pretrained("facebook/opt-350m")
            model, tokenizer = setup_chat_format(model, tokenizer)
            """),
        # `<pad>` exists in T5's vocabulary.
        Valid("""
            from transformers import AutoTokenizer, T5ForConditionalGeneration
            tokenizer = AutoTokenizer.from_pretrained("t5-small")
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            model = T5ForConditionalGeneration.from_pretrained("t5-small")
            """),
        # A model trained from scratch with the tokenizer's size.
        Valid("""
            from transformers import GPT2Config, GPT2LMHeadModel, AutoTokenizer
            tok = AutoTokenizer.from_pretrained("gpt2")
            tok.add_special_tokens({"pad_token": "[PAD]"})
            model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok)))
            """),
        # A pad token nothing pads with (the collator pads with 0 itself): the id never reaches the model.
        Valid("""
            from transformers import AutoTokenizer, AutoModelForCausalLM, DataCollatorForLanguageModeling
            tok = AutoTokenizer.from_pretrained("facebook/opt-125m")
            model = AutoModelForCausalLM.from_pretrained("facebook/opt-125m")
            class PromptCollator:
                def __init__(self, tokenizer):
                    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
                def __call__(self, examples):
                    n = max(len(e["input_ids"]) for e in examples)
                    return {"input_ids": [e["input_ids"] + [0] * (n - len(e["input_ids"])) for e in examples]}
            """),
        # Pythia's vocabulary has `<|padding|>` (id 1).
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling
            tokenizer = AutoTokenizer.from_pretrained("EleutherAI/pythia-410m")
            tokenizer.add_special_tokens({"pad_token": "<|padding|>"})
            model = AutoModelForCausalLM.from_pretrained("EleutherAI/pythia-410m")
            collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
            """),
        # Assigning the attribute does not add a token.
        Valid("""
            from transformers import AutoTokenizer, AutoModelForCausalLM
            tok = AutoTokenizer.from_pretrained("gpt2")
            tok.pad_token = "[PAD]"
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            """),
        # Resized in a helper defined in the module (Stanford Alpaca's recipe).
        Valid("""
            import transformers
            def smart_tokenizer_and_embedding_resize(special_tokens_dict, tokenizer, model):
                tokenizer.add_special_tokens(special_tokens_dict)
                model.resize_token_embeddings(len(tokenizer))
            def train():
                model = transformers.AutoModelForCausalLM.from_pretrained("huggyllama/llama-7b")
                tokenizer = transformers.AutoTokenizer.from_pretrained("huggyllama/llama-7b")
                tokenizer.add_special_tokens({"pad_token": "[PAD]"})
                smart_tokenizer_and_embedding_resize({"pad_token": "[PAD]"}, tokenizer, model)
            """),
    )
    INVALID = (
        Invalid(
            """
            from transformers import AutoTokenizer, AutoModelForCausalLM
            tokenizer = AutoTokenizer.from_pretrained("gpt2")
            tokenizer.add_special_tokens({"pad_token": "[PAD]"})
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            batch = tokenizer(["a b", "c"], padding=True, return_tensors="pt")
            loss = model(**batch, labels=batch["input_ids"]).loss
            """,
            line=3,
            message="`model`'s embeddings are never resized",
            fix="""
            from transformers import AutoTokenizer, AutoModelForCausalLM
            tokenizer = AutoTokenizer.from_pretrained("gpt2")
            tokenizer.add_special_tokens({"pad_token": "[PAD]"})
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            model.resize_token_embeddings(len(tokenizer))
            batch = tokenizer(["a b", "c"], padding=True, return_tensors="pt")
            loss = model(**batch, labels=batch["input_ids"]).loss
            """,
            applicability=Applicability.UNSAFE,
        ),
        # Domain tokens in a list variable; resize *before* the addition does not count.
        Invalid(
            """
            from transformers import AutoTokenizer, AutoModelForSeq2SeqLM
            tok = AutoTokenizer.from_pretrained("facebook/bart-base")
            model = AutoModelForSeq2SeqLM.from_pretrained("facebook/bart-base")
            model.resize_token_embeddings(len(tok))
            NEW_TOKENS = ["<person>", "<location>"]
            tok.add_tokens(NEW_TOKENS)
            """,
            line=6,
            message="'<person>', '<location>'",
            fix="""
            from transformers import AutoTokenizer, AutoModelForSeq2SeqLM
            tok = AutoTokenizer.from_pretrained("facebook/bart-base")
            model = AutoModelForSeq2SeqLM.from_pretrained("facebook/bart-base")
            model.resize_token_embeddings(len(tok))
            NEW_TOKENS = ["<person>", "<location>"]
            tok.add_tokens(NEW_TOKENS)
            model.resize_token_embeddings(len(tok))
            """,
            applicability=Applicability.UNSAFE,
        ),
        # A Lightning module: tokens built elsewhere, model on self; no fix across blocks.
        Invalid(
            """
            import lightning as L
            from transformers import AutoModelForCausalLM, AutoTokenizer
            class LitLM(L.LightningModule):
                def __init__(self, name, extra_tokens):
                    super().__init__()
                    self.tokenizer = AutoTokenizer.from_pretrained(name)
                    self.tokenizer.add_tokens(extra_tokens)
                    self.model = AutoModelForCausalLM.from_pretrained(name)
            """,
            line=7,
            message="`self.tokenizer.add_tokens(...)`",
        ),
        # "<pad>" is new to a decoder-only model's tokenizer.
        Invalid(
            """
            from transformers import AutoTokenizer, DataCollatorForSeq2Seq, LlamaForCausalLM
            model = LlamaForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")
            tokenizer = AutoTokenizer.from_pretrained("meta-llama/Llama-2-7b-hf")
            if tokenizer.pad_token is None:
                tokenizer.add_special_tokens({"pad_token": "<pad>"})
            collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
            """,
            line=5,
            message="'<pad>'",
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        vocab = ctx.get(Vocab)
        if not vocab.additions:
            return
        models = vocab.models()
        if not models or vocab.sizes_from_tokenizer():
            return
        gpt_style = all(_gpt_style(vocab, m) for m in models)
        batches = ctx.get(Batches)
        pads_with_tokenizer = vocab.pads_with_tokenizer()
        for addition in vocab.additions:
            if not batches.is_tokenizer(addition.receiver, addition.call):
                continue
            new = [t for t in addition.literals if not _maybe_existing(t, gpt_style)]
            if not new and not addition.hidden:
                continue
            if addition.pad_only and not pads_with_tokenizer:
                continue  # a pad token nothing pads with never reaches the model
            if vocab.resized_after(addition):
                continue
            tok = ctx.code(addition.receiver)
            what = ("the new token " if len(new) == 1 else "the new tokens ") + ", ".join(map(repr, new))
            if not new:
                what = "new tokens"
            elif addition.hidden:
                what += " and more"
            targets = sorted({m.target for m in models})
            model = f"`{targets[0]}`" if len(targets) == 1 else "the models' (" + ", ".join(
                f"`{t}`" for t in targets) + ")"
            yield ctx.report(
                addition.call,
                f"`{tok}.{addition.method}(...)` adds {what} to the vocabulary, but {model}'s "
                f"embeddings are never resized afterwards: the new ids are past the embedding "
                f"matrix, so the first batch containing one fails with `IndexError: index out of "
                f"range in self` (a device-side assert on CUDA)",
                fix=self._fix(ctx, addition, models, tok),
                help=f"Call `model.resize_token_embeddings(len({tok}))` after adding the tokens",
            )

    def _fix(self, ctx: Context, addition: TokenAddition, models: List[ModelBinding], tok: str) -> Optional[Fix]:
        if len({m.target for m in models}) != 1:
            return None
        statement = ctx.enclosing(addition.call, cst.SimpleStatementLine)
        if statement is None or not isinstance(ctx.parent(statement), (cst.IndentedBlock, cst.Module)):
            return None
        block = ctx.parent(statement)
        for model in models:
            model_statement = ctx.parent(model.node)
            if isinstance(model_statement, cst.SimpleStatementLine) and ctx.parent(model_statement) is block:
                later = max((statement, model_statement), key=ctx.order)
                edit = ctx.insert_statement_after(later, f"{model.target}.resize_token_embeddings(len({tok}))")
                return ctx.fix("Resize the model's embeddings to the tokenizer's length", Applicability.UNSAFE, edit)
        return None
