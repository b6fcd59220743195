"""Masked reductions and numerically safe ratio helpers shared by every method.

Conventions: tensors are ``[B, T]`` over action positions, ``mask`` is a float 0/1
tensor of the same shape, and every mean or sum runs over masked-in tokens only. Log-ratios are
clamped to ``[-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP]`` before ``exp`` so no ratio overflows float32.
"""

from __future__ import annotations

from ._torch import torch

LOG_RATIO_CLAMP = 20.0


def clamp_log_ratio(log_ratio: torch.Tensor) -> torch.Tensor:
    return log_ratio.clamp(min=-LOG_RATIO_CLAMP, max=LOG_RATIO_CLAMP)


def safe_exp(log_ratio: torch.Tensor) -> torch.Tensor:
    """``exp(clamp(log_ratio, -20, 20))``: a ratio that cannot overflow float32."""
    return clamp_log_ratio(log_ratio).exp()


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    return (x * mask).sum() if dim is None else (x * mask).sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean over masked-in entries; 0 where nothing is masked in (never NaN)."""
    return masked_sum(x, mask, dim) / (mask.sum() if dim is None else mask.sum(dim=dim)).clamp(min=1.0)


def seq_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence sum over tokens, ``[B]``."""
    return masked_sum(x, mask, dim=-1)


def seq_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean over tokens, ``[B]``; 0 for a sequence without tokens."""
    return masked_mean(x, mask, dim=-1)


def prefix_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Causal running mean ``mean_{s<=t, mask_s=1} x_s`` at every position, ``[B, T]``."""
    running_sum = torch.cumsum(x * mask, dim=-1)
    running_count = torch.cumsum(mask, dim=-1).clamp(min=1.0)
    return running_sum / running_count


def broadcast_seq(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Spread a per-sequence ``[B]`` tensor over the tokens of ``like`` (``[B, T]``)."""
    return values.unsqueeze(-1).expand_as(like)


def in_band(stat: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``low <= stat <= high`` (boolean)."""
    return (stat >= low) & (stat <= high)


def log_in_band(log_stat: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``low <= exp(log_stat) <= high`` decided in log space, so huge ratios never overflow."""
    log_low = float("-inf") if low <= 0 else torch.log(torch.tensor(low, dtype=torch.float64)).item()
    log_high = torch.log(torch.tensor(high, dtype=torch.float64)).item()
    return (log_stat >= log_low) & (log_stat <= log_high)


# --------------------------------------------------------------------------- segments (turns)
# A segment is a maximal run of consecutive action tokens of a row: in a multi-turn agent episode,
# one assistant turn between two tool outputs (which the action mask marks 0).
def segment_starts(mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool: the first token of each segment of ``mask``."""
    on = mask > 0
    before = torch.zeros_like(on)
    before[:, 1:] = on[:, :-1]
    return on & ~before


def turn_index(mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` long: 1 for the tokens of a row's first segment, 2 for its second, ...; 0 off the mask."""
    return torch.cumsum(segment_starts(mask).long(), dim=-1) * (mask > 0)


def segment_ids(mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` long: a batch-wide segment number 0, 1, ... (row-major); -1 off the mask."""
    ids = torch.cumsum(segment_starts(mask).reshape(-1).long(), dim=0).reshape(mask.shape) - 1
    return torch.where(mask > 0, ids, torch.full_like(ids, -1))


def segment_reduce(x: torch.Tensor, ids: torch.Tensor, weight: torch.Tensor, how: str) -> torch.Tensor:
    """Every token's segment ``sum`` / ``mean`` / ``max`` of ``x`` over the tokens where ``weight`` is 1.

    ``ids`` come from ``segment_ids``; the result is ``[B, T]`` (0 off the segments). A token with
    ``weight`` 0 inside a segment (a non-finite input) is skipped, as in ``seq_mean``.
    """
    flat_ids = ids.reshape(-1).clamp(min=0)
    size = max(ids.numel(), 1)
    inside = (ids >= 0).reshape(-1)
    w = (weight.reshape(-1) * inside).to(x.dtype)
    if how == "max":
        low = torch.full((), float("-inf"), dtype=x.dtype, device=x.device)
        values = torch.where(w > 0, x.reshape(-1), low)
        per_segment = torch.full((size,), float("-inf"), dtype=x.dtype, device=x.device)
        per_segment = per_segment.scatter_reduce(0, flat_ids, values, reduce="amax")
        per_segment = torch.where(torch.isfinite(per_segment), per_segment, torch.zeros_like(per_segment))
    else:
        per_segment = torch.zeros(size, dtype=x.dtype, device=x.device).index_add_(0, flat_ids, x.reshape(-1) * w)
        if how == "mean":
            counts = torch.zeros(size, dtype=x.dtype, device=x.device).index_add_(0, flat_ids, w)
            per_segment = per_segment / counts.clamp(min=1.0)
    return torch.where(ids >= 0, per_segment[flat_ids].reshape(ids.shape), torch.zeros_like(x))
