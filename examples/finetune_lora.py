"""LoRA fine-tuning of Mistral-7B on an instruction dataset (the "never stops generating" bug).

mllint reports MLL101 here: the pad token is the EOS token, and the language-modeling collator
masks every label equal to the pad id, so the EOS labels are masked and the model never learns
to stop.
"""

from datasets import load_dataset
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
)

BASE = "mistralai/Mistral-7B-v0.1"

tokenizer = AutoTokenizer.from_pretrained(BASE, add_eos_token=True)
tokenizer.pad_token = tokenizer.eos_token
tokenizer.padding_side = "right"

model = AutoModelForCausalLM.from_pretrained(BASE, torch_dtype="auto")
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                         task_type="CAUSAL_LM"))


def tokenize(example):
    text = f"### Instruction:\n{example['instruction']}\n\n### Response:\n{example['output']}"
    return tokenizer(text, truncation=True, max_length=512)


dataset = load_dataset("json", data_files="train.jsonl")["train"].map(tokenize)
collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)

trainer = Trainer(
    model=model,
    args=TrainingArguments(output_dir="out", per_device_train_batch_size=4, num_train_epochs=1),
    train_dataset=dataset,
    data_collator=collator,
)
trainer.train()
