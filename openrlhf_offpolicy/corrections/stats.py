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
    starts = on.clone()
    starts[:, 1:] &= ~on[:, :-1]
    return starts


def turn_index(mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` long: 1 for the tokens of a row's first segment, 2 for its second, ...; 0 off the mask."""
    turns = torch.cumsum(segment_starts(mask), dim=-1, dtype=torch.int64)
    return turns.masked_fill_(mask <= 0, 0)


def segment_reduce(x: torch.Tensor, segment_mask: torch.Tensor, weight: torch.Tensor, how: str,
                   turns=None) -> torch.Tensor:
    """Every token's segment ``sum`` / ``mean`` / ``max`` of ``x`` over the tokens where ``weight`` is 1.

    Segments are those of ``segment_mask``; ``turns`` (from ``turn_index``) numbers them within each
    row, None when no row has two (then each row is one segment: plain row reductions, no scatter).
    The result is ``[B, T]`` (0 off the segments). A token with ``weight`` 0 inside a segment (a
    non-finite input) is skipped, as in ``seq_mean``.
    """
    inside = segment_mask > 0
    w = weight.to(x.dtype) * inside
    if how == "max":
        values = torch.where(w > 0, x, torch.full((), float("-inf"), dtype=x.dtype, device=x.device))
        if turns is None:
            per_turn = values.amax(dim=-1, keepdim=True) if x.shape[-1] else values.sum(dim=-1, keepdim=True)
        else:
            per_turn = torch.full((x.shape[0], x.shape[-1] + 1), float("-inf"), dtype=x.dtype, device=x.device)
            per_turn = per_turn.scatter_reduce(1, turns, values, reduce="amax")
        per_turn = torch.where(torch.isfinite(per_turn), per_turn, torch.zeros_like(per_turn))
    elif turns is None:
        per_turn = (x * w).sum(dim=-1, keepdim=True)
        if how == "mean":
            per_turn = per_turn / w.sum(dim=-1, keepdim=True).clamp(min=1.0)
    else:
        buffer = torch.zeros((x.shape[0], x.shape[-1] + 1), dtype=x.dtype, device=x.device)
        per_turn = buffer.scatter_add(1, turns, x * w)
        if how == "mean":
            per_turn = per_turn / buffer.scatter_add(1, turns, w).clamp(min=1.0)
    value = per_turn.expand_as(x) if turns is None else per_turn.gather(1, turns)
    return torch.where(inside, value, torch.zeros_like(x))
