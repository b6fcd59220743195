"""Segment-level importance sampling for multi-turn agents.

A *segment* is a maximal run of consecutive action tokens of a row: in an agent episode, one
assistant turn between two tool outputs (which the action mask marks 0). Its ratio is the
geometric mean of the token ratios,

    rho_seg = exp(mean_{u in seg} log rho_u),   log rho_u = clamp(log pi_old - log pi_roll, +-20),

so it neither shrinks nor explodes with the episode's length as ``exp(sum)`` does (NeMo-RL #2269:
weight 0.06 on 8-10k-token episodes) and each turn is corrected by its own drift.

    segment-tis   c_t = clamp(rho_seg, LOW, HIGH) on every token of the segment (none dropped);
                  with LOW = 0 it is ROLL's segment weight
    segment-mis   drop the segment unless LOW <= rho_seg <= HIGH; kept tokens get c_t = rho_seg

Source: ROLL (alibaba/ROLL 8eb27cc, ``roll/utils/train_infer_corrections.py``, segment-level
train/infer correction), which computes the same geometric mean per segment; our tests check the
formula as read there (ROLL's function cannot be imported without its framework).
"""

from __future__ import annotations

from ._torch import torch

from .batch import Correction, PolicyBatch
from .gates import CORRECTIONS, token_gate
from .stats import log_in_band

SOURCE = "segment IS: ROLL (alibaba/ROLL 8eb27cc, roll/utils/train_infer_corrections.py)"


def segment_log_ratio(batch: PolicyBatch) -> torch.Tensor:
    """log rho_seg of each token's segment (mean of the clamped log rho_u): ``[B, T]``, or ``[B, 1]`` when
    every row is one segment (``PolicyBatch.segment_reduce``); the callers mask it."""
    return batch.segment_reduce(batch.log_rho, "mean")


@CORRECTIONS.register(
    "segment-tis",
    source=SOURCE,
    preset="configs/segment_tis.yaml",
    statistic="`rho_seg` (geometric mean over the turn)",
    action="clamp to band",
    coefficient="`clamp(rho_seg)`",
)
def segment_truncated_is(batch: PolicyBatch, cfg) -> Correction:
    """Segment TIS: c_t = clamp(rho_seg, low, high) on every token of the segment; nothing dropped."""
    low, high = cfg.threshold
    log_seg = segment_log_ratio(batch)
    clamped = ~log_in_band(log_seg, low, high) & batch.on
    nothing = torch.zeros_like(batch.on)
    # |log_seg| <= 20 (a mean of clamped values), so the exp stays finite in float32.
    return Correction(coef=log_seg.exp().clamp(min=low, max=high) * batch.mask, rejected=nothing, filtered=clamped)


@CORRECTIONS.register(
    "segment-mis",
    source=SOURCE,
    preset="configs/segment_mis.yaml",
    statistic="`rho_seg` (geometric mean over the turn)",
    action="drop segment outside band",
    coefficient="`rho_seg`",
)
def segment_masked_is(batch: PolicyBatch, cfg) -> Correction:
    """Segment MIS: drop a segment unless low <= rho_seg <= high; kept tokens get c_t = rho_seg."""
    low, high = cfg.threshold
    log_seg = segment_log_ratio(batch)
    return token_gate(batch, log_in_band(log_seg, low, high), log_seg.exp())
