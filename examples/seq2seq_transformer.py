"""A translation model on torch.nn.Transformer (the "never converges" bug family).

mllint reports MLL302 here: the source padding mask is passed as `memory_mask`, an attention
mask of shape (T, S), instead of `memory_key_padding_mask` (N, S).
"""

import math

import torch
from torch import nn

PAD_IDX = 1


class PositionalEncoding(nn.Module):
    def __init__(self, d_model: int, dropout: float = 0.1, max_len: int = 5000):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, 1, d_model)
        pe[:, 0, 0::2] = torch.sin(position * div_term)
        pe[:, 0, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x):
        return self.dropout(x + self.pe[: x.size(0)])


class Seq2SeqTransformer(nn.Module):
    def __init__(self, src_vocab: int, tgt_vocab: int, d_model: int = 512, nhead: int = 8):
        super().__init__()
        self.src_embed = nn.Embedding(src_vocab, d_model)
        self.tgt_embed = nn.Embedding(tgt_vocab, d_model)
        self.positional = PositionalEncoding(d_model)
        self.transformer = nn.Transformer(d_model=d_model, nhead=nhead)
        self.generator = nn.Linear(d_model, tgt_vocab)

    def forward(self, src, tgt):
        src_padding_mask = (src == PAD_IDX).transpose(0, 1)
        tgt_mask = nn.Transformer.generate_square_subsequent_mask(tgt.size(0), device=tgt.device)
        src_emb = self.positional(self.src_embed(src))
        tgt_emb = self.positional(self.tgt_embed(tgt))
        out = self.transformer(src_emb, tgt_emb, tgt_mask=tgt_mask, memory_mask=src_padding_mask)
        return self.generator(out)
