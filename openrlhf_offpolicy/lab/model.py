"""A tiny decoder-only transformer, randomly initialised from a config (no weights are downloaded)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class TinyConfig:
    vocab_size: int = 12
    max_len: int = 16
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 128

    def to_dict(self) -> dict:
        return asdict(self)


class TinyTransformer(nn.Module):
    """Token + position embeddings, pre-norm causal self-attention blocks, a linear head."""

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.positions = nn.Embedding(config.max_len, config.d_model)
        layer = nn.TransformerEncoderLayer(config.d_model, config.n_heads, config.d_ff, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, L, V]``; position i predicts token i + 1."""
        length = tokens.shape[1]
        causal = torch.triu(torch.full((length, length), float("-inf"), device=tokens.device), diagonal=1)
        hidden = self.tokens(tokens) + self.positions(torch.arange(length, device=tokens.device))
        hidden = self.blocks(hidden, mask=causal.to(hidden.dtype), is_causal=True)
        return self.head(self.norm(hidden))
