from __future__ import annotations

import re
from typing import Iterator, List, Optional

import libcst as cst

from mllint.analysis.batches import Batches
from mllint.analysis.dataflow import Assignments
from mllint.analysis.hf import DECODER_ONLY, ENCODER_DECODER, HfFacts, families
from mllint.analysis.instances import LOADERS, UNKNOWN, Instances
from mllint.analysis.signatures import TOKENIZER_CALL, bind
from mllint.analysis.training_text import TrainingExample, TrainingText
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Fix, Severity
from mllint.core.rule import Invalid, Rule, Valid

# Tokenizer classes that append no EOS unless asked (``add_eos_token`` defaults to False, or the
# class only ever adds a BOS). ``AutoTokenizer`` and ``PreTrainedTokenizerFast`` follow the
# checkpoint's ``tokenizer.json``: decoder-only checkpoints append no EOS, so only a checkpoint
# name of an EOS-appending family (below) keeps the rule silent.
_NO_EOS_TOKENIZERS = frozenset({
    "AutoTokenizer", "PreTrainedTokenizerFast", "LlamaTokenizer", "LlamaTokenizerFast",
    "CodeLlamaTokenizer", "CodeLlamaTokenizerFast", "GemmaTokenizer", "GemmaTokenizerFast",
    "GPT2Tokenizer", "GPT2TokenizerFast", "GPTNeoXTokenizer", "GPTNeoXTokenizerFast",
    "Qwen2Tokenizer", "Qwen2TokenizerFast",
})
# Checkpoint names of families whose tokenizers end every sequence with EOS/SEP (T5, BART, ...).
_EOS_APPENDING_CHECKPOINT = re.compile(
    r"(^|[-_/.])(t5|mt5|umt5|flan-t5|bart|mbart|pegasus|marian|opus-mt|m2m100|nllb|bert|roberta|"
    r"xlm-roberta|deberta|electra|albert|led|prophetnet|blenderbot|fsmt|whisper)([-_/.]|$)",
    re.IGNORECASE)
_PADDING_OFF = ("False", "None", "do_not_pad", "DO_NOT_PAD")
_TRAINING_METHODS = ("backward", "train", "fit")


class TrainingTextWithoutEos(Rule):
    """## What it does
    Checks causal-LM fine-tuning code that builds each training text from a template
    (`f"### Instruction: {ex['instruction']} ### Response: {ex['output']}"`), tokenizes it, and
    derives the labels from the same `input_ids` (`result["labels"] = result["input_ids"].copy()`,
    `labels = input_ids.clone()`, `{"labels": ids[:]}`, or
    `DataCollatorForLanguageModeling(mlm=False)`), while nothing puts an EOS token at the end:
    no `+ tokenizer.eos_token` (or a literal such as `"</s>"`), no
    `input_ids.append(tokenizer.eos_token_id)`, no `add_eos_token=True`, no chat template, and no
    trl `SFTTrainer` that appends it.

    The rule reports only what it can see: a decoder-only model (`AutoModelForCausalLM`,
    `LlamaForCausalLM`, ...), `DataCollatorForLanguageModeling(mlm=False)` or a peft
    `CAUSAL_LM` task; a training loop or trainer; a tokenizer loaded in the module whose class
    appends no EOS; and a text built in the module from a template and dataset values.

    ## Why is this bad?
    Decoder-only tokenizers do not append EOS by default. `LlamaTokenizer(Fast)` (Llama,
    Llama 2, Mistral), `CodeLlamaTokenizer` and `GemmaTokenizer` take `add_eos_token=False`
    (transformers 4.57.6 `models/llama/tokenization_llama_fast.py`,
    `LlamaTokenizerFast.__init__`, and the same default in `code_llama` and `gemma`; 5.23.0
    `tokenization_utils_tokenizers.py`, `TokenizersBackend.__init__`:
    `self._add_eos_token = kwargs.get("add_eos_token", False)`, the default of every 5.x
    tokenizer built on it, GPT-2's and Qwen2's included). In 4.x, `GPT2Tokenizer` adds at most
    a BOS (4.57.6 `models/gpt2/tokenization_gpt2.py`, `build_inputs_with_special_tokens`) and
    Qwen2's tokenizer keeps the base method, which adds nothing. So when the text has no EOS,
    neither do `input_ids` nor the labels copied from them: no example ever trains the model to
    predict EOS after the response, and the fine-tuned model rambles on until `max_new_tokens`
    (stanford_alpaca#126, trl#1623; alpaca-lora fixed its script by appending `eos_token_id`).

    trl's `SFTTrainer` appends EOS itself since trl 0.16 (0.16.0 `trainer/sft_trainer.py`,
    `_prepare_dataset`, the local `tokenize`: `processed["input_ids"] + [eos_token_id]`;
    1.16.0 `add_eos`); a module using it (with an unknown trl version) is left alone.
    Packed pre-training data (the run_clm `group_texts` recipe), raw dataset columns tokenized
    as they are, and encoder-decoder training are left alone too: there the example does not
    end where a formatted response ends, or the dataset may carry its own EOS. So is a
    tokenizer call that pads while pad = EOS: EOS then reaches `input_ids` as padding, and
    whether a collator masks it is MLL101's question.

    ## Example
    ```python
    tokenizer = AutoTokenizer.from_pretrained("mistralai/Mistral-7B-v0.1")

    def tokenize(example):
        text = f"### Question:\\n{example['question']}\\n### Answer:\\n{example['answer']}"
        result = tokenizer(text, truncation=True, max_length=512)
        result["labels"] = result["input_ids"].copy()
        return result
    ```

    ## Use instead
    ```python
    def tokenize(example):
        text = f"### Question:\\n{example['question']}\\n### Answer:\\n{example['answer']}"
        result = tokenizer(text + tokenizer.eos_token, truncation=True, max_length=512)
        result["labels"] = result["input_ids"].copy()
        return result
    ```
    or load the tokenizer with `add_eos_token=True`, or build the text with
    `tokenizer.apply_chat_template`.

    ## Fix safety
    The fix appends `+ tokenizer.eos_token` to the text argument of the tokenizer call. It is
    unsafe: it changes the training data (one more token per example; with `truncation=True`
    an over-long example still loses its EOS). It is offered only when the text is a single
    string (a literal, an f-string, or a name assigned one); when the text's shape is unknown
    it is only displayed, and for a batch of texts there is no fix (append EOS to each text).

    ## References
    - transformers `models/llama/tokenization_llama_fast.py` (`add_eos_token=False`) and
      `models/gpt2/tokenization_gpt2.py` (`build_inputs_with_special_tokens`)
    - trl `trainer/sft_trainer.py` (`_prepare_dataset`, EOS appended since 0.16)
    - https://github.com/tatsu-lab/stanford_alpaca/issues/126
    - https://github.com/huggingface/trl/issues/1623
    - https://github.com/huggingface/transformers/issues/22794
    - https://github.com/tloen/alpaca-lora/pull/146
    """

    code = "MLL108"
    name = "training-text-without-eos"
    summary = "causal-LM training text tokenized without an EOS token while labels copy input_ids"
    severity = Severity.WARNING
    tags = ("correctness", "transformers", "peft")
    triggers = (("labels", "DataCollatorForLanguageModeling"),
                ("ForCausalLM", "LMHeadModel", "DataCollatorForLanguageModeling", "CAUSAL_LM"),
                ("Tokenizer",))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (
        ("import:transformers",),
        ("name:*Tokenizer", "name:*TokenizerFast"),
        ("call:backward", "call:train", "call:fit", "name:training_step", "name:*Trainer"),
    )
    premise = {"transformers": ">=4.0"}
    VALID = (
        # EOS appended to the text.
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
            tokenizer = AutoTokenizer.from_pretrained("mistralai/Mistral-7B-v0.1")
            model = AutoModelForCausalLM.from_pretrained("mistralai/Mistral-7B-v0.1")
            def tokenize(example):
                text = f"### Q: {example['q']}\\n### A: {example['a']}{tokenizer.eos_token}"
                result = tokenizer(text, truncation=True)
                result["labels"] = result["input_ids"].copy()
                return result
            trainer = Trainer(model=model, train_dataset=ds.map(tokenize))
            """),
        # The tokenizer appends EOS itself.
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
            tokenizer = AutoTokenizer.from_pretrained("mistralai/Mistral-7B-v0.1", add_eos_token=True)
            model = AutoModelForCausalLM.from_pretrained("mistralai/Mistral-7B-v0.1")
            def tokenize(example):
                result = tokenizer(f"### Q: {example['q']}\\n### A: {example['a']}")
                result["labels"] = result["input_ids"].copy()
                return result
            trainer = Trainer(model=model, train_dataset=ds.map(tokenize))
            """),
        Valid("""
            from transformers import LlamaForCausalLM, LlamaTokenizer
            tokenizer = LlamaTokenizer.from_pretrained(path)
            tokenizer.add_eos_token = True
            model = LlamaForCausalLM.from_pretrained(path)
            def tokenize(example):
                result = tokenizer(f"Q: {example['q']} A: {example['a']}")
                result["labels"] = result["input_ids"].copy()
                return result
            model.train()
            """),
        # alpaca-lora: EOS id appended to the ids by hand.
        Valid("""
            from transformers import LlamaForCausalLM, LlamaTokenizer
            tokenizer = LlamaTokenizer.from_pretrained(base_model)
            model = LlamaForCausalLM.from_pretrained(base_model)
            def tokenize(prompt, add_eos_token=True):
                result = tokenizer(prompt, truncation=True, max_length=256, padding=False)
                if result["input_ids"][-1] != tokenizer.eos_token_id and add_eos_token:
                    result["input_ids"].append(tokenizer.eos_token_id)
                    result["attention_mask"].append(1)
                result["labels"] = result["input_ids"].copy()
                return result
            def generate_and_tokenize_prompt(data_point):
                return tokenize(f"### Instruction: {data_point['instruction']} ### Response: {data_point['output']}")
            train_data = data.map(generate_and_tokenize_prompt)
            model.train()
            """),
        # A chat template ends every turn with the model's end token.
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
            tokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")
            model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")
            def tokenize(example):
                text = tokenizer.apply_chat_template(example["messages"], tokenize=False)
                result = tokenizer(f"{text}\\n### Note: {example['note']}")
                result["labels"] = result["input_ids"].copy()
                return result
            Trainer(model=model, train_dataset=ds.map(tokenize)).train()
            """),
        # trl's SFTTrainer appends EOS (trl >= 0.16; version unknown here).
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from trl import SFTTrainer
            tokenizer = AutoTokenizer.from_pretrained("meta-llama/Llama-2-7b-hf")
            model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")
            def tokenize(example):
                result = tokenizer(f"Q: {example['q']} A: {example['a']}")
                result["labels"] = result["input_ids"].copy()
                return result
            SFTTrainer(model=model, train_dataset=ds.map(tokenize), processing_class=tokenizer).train()
            """),
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from trl import SFTTrainer
            tokenizer = AutoTokenizer.from_pretrained("meta-llama/Llama-2-7b-hf")
            model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")
            def tokenize(example):
                result = tokenizer(f"Q: {example['q']} A: {example['a']}")
                result["labels"] = result["input_ids"].copy()
                return result
            SFTTrainer(model=model, train_dataset=ds.map(tokenize), processing_class=tokenizer).train()
            """, settings={"target_versions": {"trl": "0.16.0"}}),
        # run_clm packing: blocks cut across documents; labels copy the packed block.
        Valid("""
            from itertools import chain
            from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
            tokenizer = AutoTokenizer.from_pretrained("gpt2")
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            def tokenize_function(examples):
                return tokenizer([f"Title: {t}" for t in examples["title"]])
            def group_texts(examples):
                concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
                result = {k: [t[i:i + 128] for i in range(0, len(t), 128)] for k, t in concatenated.items()}
                result["labels"] = result["input_ids"].copy()
                return result
            lm = ds.map(tokenize_function, batched=True).map(group_texts, batched=True)
            Trainer(model=model, train_dataset=lm).train()
            """),
        # A raw dataset column, tokenized as it is: the dataset may carry its own EOS.
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
            tokenizer = AutoTokenizer.from_pretrained("meta-llama/Llama-2-7b-hf")
            model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")
            def tokenize_function(examples):
                inputs = tokenizer(examples["text"], truncation=True, max_length=512)
                inputs["labels"] = inputs["input_ids"].copy()
                return inputs
            Trainer(model=model, train_dataset=ds.map(tokenize_function, batched=True)).train()
            """),
        # No labels derived from input_ids in the module.
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
            tokenizer = AutoTokenizer.from_pretrained("meta-llama/Llama-2-7b-hf")
            model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")
            def tokenize(example):
                labels = tokenizer(example["answer"])["input_ids"]
                return {"input_ids": tokenizer(f"Q: {example['q']}")["input_ids"], "labels": labels}
            Trainer(model=model, train_dataset=ds.map(tokenize)).train()
            """),
        # Encoder-decoder training.
        Valid("""
            from transformers import AutoModelForSeq2SeqLM, AutoModelForCausalLM, AutoTokenizer, Trainer
            tokenizer = AutoTokenizer.from_pretrained("google/flan-t5-base")
            model = AutoModelForSeq2SeqLM.from_pretrained("google/flan-t5-base")
            def tokenize(example):
                result = tokenizer(f"question: {example['q']}")
                result["labels"] = result["input_ids"].copy()
                return result
            Trainer(model=model, train_dataset=ds.map(tokenize)).train()
            """),
        # A tokenizer of an EOS-appending family (BART's tokenizer ends with </s>).
        Valid("""
            from transformers import AutoTokenizer, BartForCausalLM
            tokenizer = AutoTokenizer.from_pretrained("facebook/bart-base")
            model = BartForCausalLM.from_pretrained("facebook/bart-base")
            def tokenize(example):
                result = tokenizer(f"Q: {example['q']} A: {example['a']}")
                result["labels"] = result["input_ids"].copy()
                return result
            model.train()
            """),
        # The tokenizer is a parameter of a helper module: its class is unknown.
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained(path)
            def tokenize(tokenizer, example):
                result = tokenizer(f"Q: {example['q']} A: {example['a']}")
                result["labels"] = result["input_ids"].copy()
                return result
            model.train()
            """),
        # The text comes from another module's template (which may end with EOS).
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
            from utils.prompter import Prompter
            tokenizer = AutoTokenizer.from_pretrained("huggyllama/llama-7b")
            model = AutoModelForCausalLM.from_pretrained("huggyllama/llama-7b")
            prompter = Prompter("alpaca")
            def tokenize(example):
                result = tokenizer(prompter.generate_prompt(example["instruction"], example["output"]))
                result["labels"] = result["input_ids"].copy()
                return result
            Trainer(model=model, train_dataset=ds.map(tokenize)).train()
            """),
        # pad = EOS and the call pads: EOS tokens reach input_ids as padding (see MLL101).
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
            tokenizer = AutoTokenizer.from_pretrained("deepseek-ai/deepseek-llm-7b-base")
            tokenizer.pad_token = tokenizer.eos_token
            model = AutoModelForCausalLM.from_pretrained("deepseek-ai/deepseek-llm-7b-base")
            def format(sample):
                prompt = f"### Instruction:\\n{sample['instruction']}\\n\\n### Response:\\n{sample['output']}"
                result = tokenizer(prompt, truncation=True, padding="max_length", max_length=512)
                result["labels"] = result["input_ids"].copy()
                return result
            Trainer(model=model, train_dataset=ds.map(format)).train()
            """),
        # A literal EOS in the template.
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
            tokenizer = AutoTokenizer.from_pretrained("meta-llama/Llama-2-7b-hf")
            model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")
            TEMPLATE = "<s>[INST] {q} [/INST] {a} </s>"
            def tokenize(example):
                result = tokenizer(TEMPLATE.format(q=example["q"], a=example["a"]), add_special_tokens=False)
                result["labels"] = result["input_ids"].copy()
                return result
            Trainer(model=model, train_dataset=ds.map(tokenize)).train()
            """),
        # A terminator of the author's own ends every example (Dolly's "### End", used as the
        # stop token at generation).
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
            tokenizer = AutoTokenizer.from_pretrained("EleutherAI/pythia-2.8b")
            tokenizer.add_special_tokens({"additional_special_tokens": ["### End"]})
            model = AutoModelForCausalLM.from_pretrained("EleutherAI/pythia-2.8b")
            def tokenize(example):
                result = tokenizer(f"### Instruction:\\n{example['q']}\\n\\n### Response:\\n{example['a']}\\n\\n### End")
                result["labels"] = result["input_ids"].copy()
                return result
            Trainer(model=model, train_dataset=ds.map(tokenize)).train()
            """),
        # Scoring a formatted text (perplexity) without training.
        Valid("""
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("gpt2")
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            enc = tokenizer(f"Q: {question}\\nA: {answer}", return_tensors="pt")
            labels = enc.input_ids.clone()
            print(model(**enc, labels=labels).loss)
            """),
    )
    INVALID = (
        Invalid(
            """
            from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
            tokenizer = AutoTokenizer.from_pretrained("mistralai/Mistral-7B-v0.1")
            model = AutoModelForCausalLM.from_pretrained("mistralai/Mistral-7B-v0.1")
            def tokenize(example):
                text = f"### Question:\\n{example['question']}\\n### Answer:\\n{example['answer']}"
                result = tokenizer(text, truncation=True, max_length=512)
                result["labels"] = result["input_ids"].copy()
                return result
            Trainer(model=model, train_dataset=ds.map(tokenize)).train()
            """,
            line=6,
            message="`tokenize()` tokenizes a training text built without an EOS token",
            fix="""
            from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
            tokenizer = AutoTokenizer.from_pretrained("mistralai/Mistral-7B-v0.1")
            model = AutoModelForCausalLM.from_pretrained("mistralai/Mistral-7B-v0.1")
            def tokenize(example):
                text = f"### Question:\\n{example['question']}\\n### Answer:\\n{example['answer']}"
                result = tokenizer(text + tokenizer.eos_token, truncation=True, max_length=512)
                result["labels"] = result["input_ids"].copy()
                return result
            Trainer(model=model, train_dataset=ds.map(tokenize)).train()
            """,
            applicability=Applicability.UNSAFE,
        ),
        # The alpaca-lora shape without its EOS handling: the text reaches tokenize() as a parameter.
        Invalid(
            """
            from transformers import LlamaForCausalLM, LlamaTokenizer, Trainer
            tokenizer = LlamaTokenizer.from_pretrained(base_model)
            tokenizer.pad_token_id = 0
            model = LlamaForCausalLM.from_pretrained(base_model)
            def generate_prompt(data_point):
                return f\"\"\"Below is an instruction. Write a response.
            ### Instruction:
            {data_point["instruction"]}
            ### Response:
            {data_point["output"]}\"\"\"
            def tokenize(prompt):
                result = tokenizer(prompt, truncation=True, max_length=256, padding=False)
                result["labels"] = result["input_ids"].copy()
                return result
            def generate_and_tokenize_prompt(data_point):
                full_prompt = generate_prompt(data_point)
                return tokenize(full_prompt)
            train_data = data.shuffle().map(generate_and_tokenize_prompt)
            Trainer(model=model, train_dataset=train_data).train()
            """,
            line=12,
            message="`result[\"labels\"]` copies its `input_ids` (line 13)",
            applicability=Applicability.DISPLAY_ONLY,
        ),
        # Labels made by DataCollatorForLanguageModeling(mlm=False) from a mapped lambda.
        Invalid(
            """
            import transformers
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("huggyllama/llama-7b")
            tokenizer.pad_token_id = 0
            model = AutoModelForCausalLM.from_pretrained("huggyllama/llama-7b")
            def generate_prompt(row):
                return f"### Instruction:\\n{row['instruction']}\\n\\n### Response:\\n{row['output']}"
            data = data.map(lambda x: tokenizer(generate_prompt(x), max_length=256, padding="max_length"))
            collator = transformers.DataCollatorForLanguageModeling(tokenizer, mlm=False)
            trainer = transformers.Trainer(model=model, train_dataset=data, data_collator=collator)
            trainer.train()
            """,
            line=8,
            message="`DataCollatorForLanguageModeling(mlm=False)` copies its `input_ids` into the labels (line 9)",
        ),
        # A torch Dataset and a plain loop; labels in the returned dict.
        Invalid(
            """
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen2.5-0.5B")
            model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B")
            class SFTDataset(torch.utils.data.Dataset):
                def __init__(self, rows, tokenizer):
                    self.rows = rows
                    self.tok = tokenizer
                def __getitem__(self, i):
                    row = self.rows[i]
                    ids = self.tok.encode("User: " + row["q"] + " Assistant: " + row["a"])
                    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(ids).clone()}
            for batch in loader:
                model(**batch).loss.backward()
            """,
            line=11,
            message="`__getitem__()`",
            fix="""
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen2.5-0.5B")
            model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B")
            class SFTDataset(torch.utils.data.Dataset):
                def __init__(self, rows, tokenizer):
                    self.rows = rows
                    self.tok = tokenizer
                def __getitem__(self, i):
                    row = self.rows[i]
                    ids = self.tok.encode("User: " + row["q"] + " Assistant: " + row["a"] + self.tok.eos_token)
                    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(ids).clone()}
            for batch in loader:
                model(**batch).loss.backward()
            """,
            applicability=Applicability.UNSAFE,
        ),
        # A batch of texts in a collate function: no fix (EOS goes on every text).
        Invalid(
            """
            import lightning as L
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("meta-llama/Llama-3.2-1B")
            tokenizer.pad_token = "<|finetune_right_pad_id|>"
            def collate(rows):
                texts = [f"Question: {r['question']}\\nAnswer: {r['answer']}" for r in rows]
                batch = tokenizer(texts, padding=True, return_tensors="pt")
                batch["labels"] = batch["input_ids"].clone()
                return batch
            class LitLM(L.LightningModule):
                def __init__(self):
                    super().__init__()
                    self.model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-3.2-1B")
                def training_step(self, batch, batch_idx):
                    return self.model(**batch).loss
            """,
            line=7,
            message="`collate()`",
        ),
        # trl < 0.16 SFTTrainer does not append EOS.
        Invalid(
            """
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from trl import SFTTrainer
            tokenizer = AutoTokenizer.from_pretrained("meta-llama/Llama-2-7b-hf")
            model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")
            def tokenize(example):
                result = tokenizer(f"Q: {example['q']} A: {example['a']}")
                result["labels"] = result["input_ids"].copy()
                return result
            SFTTrainer(model=model, train_dataset=ds.map(tokenize), tokenizer=tokenizer).train()
            """,
            line=6,
            settings={"target_versions": {"trl": "0.15.2"}},
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        text = ctx.get(TrainingText)
        if text.packs() or text.eos_evidence() is not None or not self._causal_training(ctx, text):
            return
        pad_is_eos = bool(ctx.get(HfFacts).eos_pad_assignments())
        for example in text.examples():
            if pad_is_eos and _pads(example.call):
                continue
            if not self._appends_no_eos(ctx, example.tokenizer, example.call):
                continue
            if not text.sources(example.text).built_without_eos:
                continue
            function = ctx.enclosing(example.call, cst.FunctionDef)
            where = f"`{function.name.value}()`" if function is not None else "This call"
            row = ctx.locator.location(ctx.span(example.evidence)[0]).row
            tokenizer = ctx.code(example.tokenizer)
            yield ctx.report(
                example.call,
                f"{where} tokenizes a training text built without an EOS token, and "
                f"{example.description} (line {row}): the model is never trained to emit EOS "
                "and will not stop generating",
                fix=self._fix(ctx, example),
                help=(f"Append `{tokenizer}.eos_token` to the text, or load the tokenizer with "
                      "`add_eos_token=True`: Llama/Mistral-family tokenizers default to "
                      "`add_eos_token=False` and GPT-2-style tokenizers never append EOS"),
            )

    # -- evidence ----------------------------------------------------------------------------
    @staticmethod
    def _causal_training(ctx: Context, text: TrainingText) -> bool:
        """A decoder-only model (or a causal-LM collator / peft task) and no encoder-decoder
        model, trained in this module (a trainer, ``.backward()``, ``.train()``, a Lightning
        ``training_step``)."""
        instances = ctx.get(Instances)
        kinds = set()
        trains = any(f.name.value == "training_step" for f in ctx.nodes(cst.FunctionDef))
        for call in ctx.nodes(cst.Call):
            func = call.func
            names = ctx.names.resolve(func)
            if isinstance(func, cst.Attribute) and func.attr.value in LOADERS:
                kinds |= instances.constructed(call)
            elif isinstance(func, cst.Attribute) and func.attr.value in _TRAINING_METHODS:
                trains = True
            if any(n.startswith(("transformers.", "trl.")) and n.endswith("Trainer") for n in names):
                trains = True
        found = families(kinds)
        if ENCODER_DECODER in found:
            return False
        causal = DECODER_ONLY in found or text.collator() is not None or "CAUSAL_LM" in ctx.source
        return causal and trains

    def _appends_no_eos(self, ctx: Context, tokenizer: cst.BaseExpression, at: cst.CSTNode) -> bool:
        """Every candidate class of the tokenizer appends no EOS, and no checkpoint it is loaded
        from names an EOS-appending family."""
        at = _scope_of(ctx, tokenizer, at)
        kinds = ctx.get(Instances).kinds(tokenizer, at)
        if not kinds or UNKNOWN in kinds:
            return False
        if not all(k.startswith("transformers.") and k.rsplit(".", 1)[-1] in _NO_EOS_TOKENIZERS
                   for k in kinds):
            return False
        text = ctx.get(TrainingText)
        for loader in self._loaders(ctx, tokenizer, at, 0):
            checkpoint = loader.args[0].value if loader.args and loader.args[0].keyword is None else None
            if isinstance(checkpoint, cst.Name):
                checkpoint = text.value_of(checkpoint)
            if isinstance(checkpoint, cst.SimpleString) and isinstance(checkpoint.evaluated_value, str) \
                    and _EOS_APPENDING_CHECKPOINT.search(checkpoint.evaluated_value):
                return False
        return True

    def _loaders(self, ctx: Context, tokenizer: cst.BaseExpression, at: cst.CSTNode,
                 depth: int) -> List[cst.Call]:
        """The ``from_pretrained(...)`` calls the tokenizer comes from (through ``self.x = x``)."""
        instances = ctx.get(Instances)
        if isinstance(tokenizer, cst.Name):
            values = instances.values(tokenizer.value, at)
        elif isinstance(tokenizer, cst.Attribute) and isinstance(tokenizer.value, cst.Name) \
                and tokenizer.value.value == "self":
            cls = ctx.enclosing(at, cst.ClassDef)
            values = instances.attr_values.get(cls, {}).get(tokenizer.attr.value, []) if cls else []
        else:
            values = []
        out: List[cst.Call] = []
        for value in values:
            if isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute) \
                    and value.func.attr.value in LOADERS:
                out.append(value)
            elif isinstance(value, (cst.Name, cst.Attribute)) and depth < 4:
                out.extend(self._loaders(ctx, value, value, depth + 1))
        return out

    # -- fix ---------------------------------------------------------------------------------
    @staticmethod
    def _fix(ctx: Context, example: TrainingExample) -> Optional[Fix]:
        one = _one_text(ctx, example.text)
        if one is False:
            return None
        text = example.text
        simple = isinstance(text, (cst.Name, cst.Attribute, cst.Subscript, cst.Call, cst.SimpleString,
                                   cst.FormattedString, cst.ConcatenatedString)) or (
            isinstance(text, cst.BinaryOperation) and isinstance(text.operator, cst.Add))
        code = ctx.code(text) if simple else f"({ctx.code(text)})"
        edit = ctx.replace(text, f"{code} + {ctx.code(example.tokenizer)}.eos_token")
        applicability = Applicability.UNSAFE if one else Applicability.DISPLAY_ONLY
        return ctx.fix(f"Append `{ctx.code(example.tokenizer)}.eos_token` to the training text",
                       applicability, edit)


def _scope_of(ctx: Context, tokenizer: cst.BaseExpression, at: cst.CSTNode) -> cst.CSTNode:
    """Where to look ``tokenizer`` up from: a name that a nested function neither assigns nor
    takes as a parameter is the enclosing function's (``def main(): tok = ...; def tokenize(ex):
    tok(...)``), so the lookup moves to the nested function's definition."""
    if not isinstance(tokenizer, cst.Name):
        return at
    assigned = ctx.get(Instances).scope_values
    function = ctx.enclosing(at, cst.FunctionDef)
    while function is not None and ctx.enclosing(function, cst.FunctionDef) is not None:
        params = function.params
        names = {p.name.value for p in (*params.posonly_params, *params.params, *params.kwonly_params)}
        if tokenizer.value in names or tokenizer.value in assigned.get(function, {}):
            break
        at = function
        function = ctx.enclosing(function, cst.FunctionDef)
    return at


def _one_text(ctx: Context, text: cst.BaseExpression, depth: int = 0) -> Optional[bool]:
    """True for a single string (``"..." + x`` counts: adding a string to a list fails; so does
    a local function returning one), False for several texts, None when it cannot be told."""
    if isinstance(text, cst.Name) and depth < 4:
        value = ctx.get(Assignments).reaching(text)
        if value is not None:
            return _one_text(ctx, value, depth + 1)
    if isinstance(text, cst.BinaryOperation) and isinstance(text.operator, cst.Add):
        sides = (_one_text(ctx, text.left, depth + 1), _one_text(ctx, text.right, depth + 1))
        return True if True in sides else None
    function = ctx.get(TrainingText).local_function(text) if isinstance(text, cst.Call) else None
    if function is not None and depth < 4:
        shapes = {_one_text(ctx, value, depth + 1) for value in ctx.get(TrainingText).returns(function)}
        return shapes.pop() if len(shapes) == 1 else None
    several = ctx.get(Batches).several_texts(text)
    return None if several is None else not several


def _pads(call: cst.Call) -> bool:
    """Whether a tokenizer call pads (or might: an unknown ``padding=`` value)."""
    padding = bind(call, TOKENIZER_CALL).value("padding")
    if padding is None:
        return False
    if isinstance(padding, cst.Name) and padding.value in _PADDING_OFF:
        return False
    return not (isinstance(padding, cst.SimpleString) and padding.evaluated_value in _PADDING_OFF)
