"""Argument binding against a declarative table of known signatures.

A rule asks "what is bound to ``memory_mask`` in this call?" and never counts positions itself.
Signatures are copied from the libraries' source (versions noted per entry); ``self`` is left
out. A call with ``*args``/``**kwargs`` splats binds what it can and says which parameters may be
bound invisibly, so a rule can stay silent when it cannot tell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import libcst as cst


@dataclass(frozen=True)
class Signature:
    params: Tuple[str, ...]  # positional-or-keyword, in order
    keyword_only: Tuple[str, ...] = ()
    varargs: bool = False  # the callee itself takes *args after ``params``
    varkw: bool = False  # the callee takes **kwargs

    def accepts(self, name: str) -> bool:
        return name in self.params or name in self.keyword_only or self.varkw


@dataclass
class Binding:
    args: Dict[str, cst.Arg] = field(default_factory=dict)
    # Keyword arguments that land in the callee's ``**kwargs`` (``generate(attention_mask=...)``).
    kwargs: Dict[str, cst.Arg] = field(default_factory=dict)
    # A ``*x`` or ``**x`` in the call: parameters not in ``args`` may still be bound.
    opaque: bool = False
    extra: List[cst.Arg] = field(default_factory=list)  # arguments that bind to no parameter

    def arg(self, name: str) -> Optional[cst.Arg]:
        """The argument bound to parameter ``name``, or passed as ``name=`` into ``**kwargs``."""
        return self.args.get(name) or self.kwargs.get(name)

    def value(self, name: str) -> Optional[cst.BaseExpression]:
        arg = self.arg(name)
        return None if arg is None else arg.value

    def passed(self, name: str) -> bool:
        return self.arg(name) is not None

    def maybe_passed(self, name: str) -> bool:
        return self.passed(name) or self.opaque

    def splats(self, call: cst.Call) -> List[cst.BaseExpression]:
        """The ``x`` of every ``**x`` in ``call``."""
        return [a.value for a in call.args if a.star == "**"]

    def is_keyword(self, name: str) -> bool:
        arg = self.args.get(name)
        return arg is not None and arg.keyword is not None


def bind(call: cst.Call, signature: Signature) -> Binding:
    binding = Binding()
    position = 0
    positional_known = True
    for arg in call.args:
        if arg.star == "**":
            binding.opaque = True
        elif arg.star == "*":
            binding.opaque = True
            positional_known = False
        elif arg.keyword is not None:
            name = arg.keyword.value
            if name in signature.params or name in signature.keyword_only:
                binding.args[name] = arg
            elif signature.varkw:
                binding.kwargs[name] = arg
            else:
                binding.extra.append(arg)
        elif positional_known and position < len(signature.params):
            binding.args[signature.params[position]] = arg
            position += 1
        else:
            binding.extra.append(arg)
    return binding


# -- the table ---------------------------------------------------------------------------------
# torch 2.13.0, torch/nn/modules/transformer.py and activation.py (forward methods; the same
# parameter names and order since torch 2.0, ``*_is_causal`` added in 2.0/2.1).
TRANSFORMER_FORWARD = Signature((
    "src", "tgt", "src_mask", "tgt_mask", "memory_mask", "src_key_padding_mask",
    "tgt_key_padding_mask", "memory_key_padding_mask", "src_is_causal", "tgt_is_causal",
    "memory_is_causal",
))
DECODER_FORWARD = Signature((
    "tgt", "memory", "tgt_mask", "memory_mask", "tgt_key_padding_mask",
    "memory_key_padding_mask", "tgt_is_causal", "memory_is_causal",
))
ENCODER_FORWARD = Signature(("src", "mask", "src_key_padding_mask", "is_causal"))
ENCODER_LAYER_FORWARD = Signature(("src", "src_mask", "src_key_padding_mask", "is_causal"))
MHA_FORWARD = Signature((
    "query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
    "average_attn_weights", "is_causal",
))

# What calling an instance of a class binds to (its ``forward``).
INSTANCE_CALLS: Dict[str, Signature] = {
    "torch.nn.Transformer": TRANSFORMER_FORWARD,
    "torch.nn.TransformerDecoder": DECODER_FORWARD,
    "torch.nn.TransformerDecoderLayer": DECODER_FORWARD,
    "torch.nn.TransformerEncoder": ENCODER_FORWARD,
    "torch.nn.TransformerEncoderLayer": ENCODER_LAYER_FORWARD,
    "torch.nn.MultiheadAttention": MHA_FORWARD,
}



def key_padding_parameters(cls: str) -> Tuple[str, ...]:
    """The ``forward`` parameters of torch attention class ``cls`` that take an (N, S)
    key-padding mask (True = ignore)."""
    signature = INSTANCE_CALLS.get(cls)
    return tuple(p for p in signature.params if p.endswith("key_padding_mask")) if signature else ()


def attention_mask_parameters(cls: str) -> Tuple[str, ...]:
    """The ``forward`` parameters of torch attention class ``cls`` that take an (L, S) or
    (N * num_heads, L, S) attention mask."""
    signature = INSTANCE_CALLS.get(cls)
    return tuple(p for p in signature.params if p.endswith("mask") and not p.endswith("key_padding_mask")) \
        if signature else ()


# Calls of functions and constructors.
CALLS: Dict[str, Signature] = {
    # transformers data/data_collator.py, a dataclass; fields as of 5.23.0. ``tokenizer`` and
    # ``mlm`` are fields 0 and 1 in every version from 4.30 to 5.23; the later positions moved
    # (4.57 inserted ``whole_word_mask`` at 2), so rules only bind the first two positionally.
    "transformers.DataCollatorForLanguageModeling": Signature(
        ("tokenizer", "mlm", "whole_word_mask", "mlm_probability", "mask_replace_prob",
         "random_replace_prob", "pad_to_multiple_of", "return_tensors", "seed")),
    # trl 0.15-0.19, trainer/utils.py (removed in 0.20): ``mlm`` is keyword-only after ``*args``.
    "trl.DataCollatorForCompletionOnlyLM": Signature(
        ("response_template", "instruction_template"),
        keyword_only=("mlm", "ignore_index", "padding_free"), varargs=True, varkw=True),
    "torch.nn.Transformer": Signature((
        "d_model", "nhead", "num_encoder_layers", "num_decoder_layers", "dim_feedforward",
        "dropout", "activation", "custom_encoder", "custom_decoder", "layer_norm_eps",
        "batch_first", "norm_first", "bias", "device", "dtype")),
}

# transformers generation/utils.py, ``GenerationMixin.generate`` (5.23.0; 4.46-4.57 the same
# without ``custom_generate``). Everything else (``input_ids``, ``attention_mask``,
# ``pad_token_id``, ``max_new_tokens``, ``decoder_input_ids``, ...) goes through ``**kwargs`` into
# the generation config or the model inputs.
GENERATE = Signature((
    "inputs", "generation_config", "logits_processor", "stopping_criteria",
    "prefix_allowed_tokens_fn", "synced_gpus", "assistant_model", "streamer",
    "negative_prompt_ids", "negative_prompt_attention_mask", "custom_generate",
), varkw=True)
# Tokenizer ``__call__`` (tokenization_utils_base.py, ``PreTrainedTokenizerBase.__call__``, 4.30 to
# 5.23): ``text`` first, then ``text_pair``, ``text_target``, ``text_pair_target``,
# ``add_special_tokens``, ``padding``, ... ; only the first two are ever passed positionally.
TOKENIZER_CALL = Signature(("text", "text_pair", "text_target", "text_pair_target",
                            "add_special_tokens", "padding", "truncation", "max_length"), varkw=True)

CALLS.update({
    # generation/configuration_utils.py: ``GenerationConfig.__init__(self, **kwargs)``.
    "transformers.GenerationConfig": Signature((), varkw=True),
    # data/data_collator.py, a dataclass with the same field order from 4.30 to 5.23.
    "transformers.DataCollatorForSeq2Seq": Signature((
        "tokenizer", "model", "padding", "max_length", "pad_to_multiple_of", "label_pad_token_id",
        "return_tensors")),
    "transformers.DataCollatorWithPadding": Signature((
        "tokenizer", "padding", "max_length", "pad_to_multiple_of", "return_tensors")),
})

CALLS.update({
    # torch 2.13.0 nn/modules/transformer.py, ``TransformerDecoder.__init__`` (L585-590) and
    # ``TransformerDecoderLayer.__init__`` (L1026-1039). Rules read ``batch_first`` from them.
    "torch.nn.TransformerDecoder": Signature(("decoder_layer", "num_layers", "norm")),
    "torch.nn.TransformerDecoderLayer": Signature((
        "d_model", "nhead", "dim_feedforward", "dropout", "activation", "layer_norm_eps",
        "batch_first", "norm_first", "bias", "device", "dtype")),
})

# Attributes of known classes that hold instances of other known classes.
MEMBER_TYPES: Dict[str, Dict[str, str]] = {
    "torch.nn.Transformer": {
        "encoder": "torch.nn.TransformerEncoder",
        "decoder": "torch.nn.TransformerDecoder",
    },
}

# torch 2.13.0 nn/functional.py, ``scaled_dot_product_attention`` docstring: ``query, key, value,
# attn_mask=None, dropout_p=0.0, is_causal=False``, then ``scale`` (documented keyword-only) and
# ``enable_gqa`` (2.5+). Its bool ``attn_mask`` means True = take part, unlike torch modules.
SDPA = Signature(("query", "key", "value", "attn_mask", "dropout_p", "is_causal"),
                 keyword_only=("scale", "enable_gqa"))
