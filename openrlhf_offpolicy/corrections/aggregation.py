"""Reduce a per-token loss to a scalar with upstream OpenRLHF 0.11.2's ``aggregate_loss`` semantics.

token-mean (``token_level_loss=True``):  sum_{b,t} m l / N_tokens
seq-mean-token-mean (False):            sum_b [sum_t m l / sum_t m] / N_sequences
``batch_num_tokens`` / ``global_batch_size`` carry the global totals so that the loss does not
depend on how the batch is split into micro-batches or data-parallel shards, and ``dp_size``
undoes the gradient averaging DeepSpeed applies across DP ranks. A rejected token contributes 0
to the numerator and still counts in the denominator: masks never change the normaliser (the
TRM paper's 1/N rule). Unlike upstream, an all-masked batch gives 0, not NaN.
"""

from __future__ import annotations

from typing import Optional

from ._torch import torch

from .stats import masked_mean


def _as_denominator(value, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).clamp(min=1e-8)


def aggregate_loss(
    loss: torch.Tensor,
    mask: torch.Tensor,
    token_level_loss: bool = True,
    dp_size: int = 1,
    batch_num_tokens: Optional[float] = None,
    global_batch_size: Optional[float] = None,
    premasked: bool = False,
) -> torch.Tensor:
    """``premasked``: ``loss`` is already 0 off ``mask`` (saves one pass; the value is the same)."""
    masked = loss if premasked else torch.where(mask != 0, loss * mask, torch.zeros_like(loss))  # never 0 * inf
    if token_level_loss:
        if batch_num_tokens is None:
            return masked.sum() / mask.sum().clamp(min=1.0)
        return masked.sum() / _as_denominator(batch_num_tokens, masked) * dp_size

    token_counts = mask.sum(dim=-1)
    per_seq = masked.sum(dim=-1) / (token_counts + 1e-8)
    has_tokens = (token_counts > 0).to(per_seq.dtype)
    if global_batch_size is None:
        return masked_mean(per_seq, has_tokens)
    return (per_seq * has_tokens).sum() / _as_denominator(global_batch_size, per_seq) * dp_size
