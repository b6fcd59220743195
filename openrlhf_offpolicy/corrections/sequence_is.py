"""Sequence-level gates and weights on the mismatch ratio.

Two sequence statistics, over the action tokens of sequence y:
    rho(y)     = exp(sum_t log rho_t)    extensive: drifts exponentially with length
    rho_geo(y) = exp(mean_t log rho_t)   intensive: length-invariant
Gating on rho(y) (``seq-tis``, ``seq-mis``) rejects long sequences more often, a length bias;
gating on rho_geo(y) (``seq-mask-tis``, ``geo-mask``) does not (Li, "Trust Region Optimization via
Sequence Masking", Theory Part 3, 2025, §2–3).
"""

from __future__ import annotations

from ._torch import torch

from .batch import Correction, PolicyBatch
from .gates import CORRECTIONS, sequence_gate, token_ratio
from .stats import broadcast_seq, clamp_log_ratio, log_in_band, seq_mean, seq_sum

MIS_SOURCE = (
    "Liu, Li et al., 'When Speed Kills Stability: Demystifying RL Collapse from the "
    "Training-Inference Mismatch', 2025; Li, 'Trust Region Optimization via Sequence Masking', 2025"
)


def geo_mean_log_ratio(batch: PolicyBatch) -> torch.Tensor:
    """log rho_geo(y) = mean_t log rho_t, ``[B]``."""
    return seq_mean(batch.log_rho, batch.mask)


def seq_log_ratio(batch: PolicyBatch) -> torch.Tensor:
    """log rho(y) = sum_t log rho_t, ``[B]`` (unclamped: compared in log space)."""
    return seq_sum(batch.log_rho, batch.mask)


@CORRECTIONS.register(
    "seq-mask-tis",
    legacy=True,
    source="OpenRLHF 0.9.x 'seq-mask-tis'; Li, 'Trust Region Optimization via Sequence Masking', 2025",
    preset="configs/seq_mask_tis.yaml",
    script="train_sequence_is.sh",
    statistic="`rho_geo(y)`",
    action="drop sequence outside band",
    coefficient="`rho_t`",
)
def seq_mask_token_is(batch: PolicyBatch, cfg) -> Correction:
    """Geo-Mask gate, token IS weight: drop y if rho_geo(y) is outside the band, else c_t = rho_t."""
    low, high = cfg.threshold
    return sequence_gate(batch, log_in_band(geo_mean_log_ratio(batch), low, high), token_ratio(batch))


@CORRECTIONS.register(
    "geo-mask",
    source="Geo-Mask: Li, 'Trust Region Optimization via Sequence Masking', 2025",
    preset="configs/geo_mask.yaml",
    script="train_sequence_is.sh",
    statistic="`rho_geo(y)`",
    action="drop sequence outside band",
    coefficient="`1` (pure filter)",
)
def geo_mask(batch: PolicyBatch, cfg) -> Correction:
    """Geo-Mask, a pure filter: drop y if rho_geo(y) is outside the band, else c_t = 1."""
    low, high = cfg.threshold
    return sequence_gate(batch, log_in_band(geo_mean_log_ratio(batch), low, high), torch.ones_like(batch.mask))


@CORRECTIONS.register(
    "seq-tis",
    source="Seq-TIS: " + MIS_SOURCE,
    preset="configs/seq_tis.yaml",
    script="train_sequence_is.sh",
    statistic="`rho(y)`",
    action="clamp to band",
    coefficient="`clamp(rho(y))`",
)
def seq_truncated_is(batch: PolicyBatch, cfg) -> Correction:
    """Sequence TIS: c_t = clamp(rho(y), low, high) on every token of y; no sequence dropped."""
    low, high = cfg.threshold
    log_rho_seq = seq_log_ratio(batch)
    weight = clamp_log_ratio(log_rho_seq).exp().clamp(min=low, max=high)
    clamped_seq = ~log_in_band(log_rho_seq, low, high)
    rejected = torch.zeros_like(batch.mask, dtype=torch.bool)
    return Correction(coef=broadcast_seq(weight, batch.mask) * batch.mask, rejected=rejected, filtered=clamped_seq,
                      weight_level="sequence")


@CORRECTIONS.register(
    "seq-mis",
    source="Seq-MIS: " + MIS_SOURCE,
    preset="configs/seq_mis.yaml",
    script="train_sequence_is.sh",
    statistic="`rho(y)`",
    action="drop sequence outside band",
    coefficient="`rho(y)`",
)
def seq_masked_is(batch: PolicyBatch, cfg) -> Correction:
    """Sequence MIS: drop y if rho(y) is outside the band, else c_t = rho(y) on every token."""
    low, high = cfg.threshold
    log_rho_seq = seq_log_ratio(batch)
    keep = log_in_band(log_rho_seq, low, high)
    # A kept rho(y) lies in [low, high], so this exp cannot overflow.
    weight = broadcast_seq(clamp_log_ratio(log_rho_seq).exp(), batch.mask)
    out = sequence_gate(batch, keep, weight)
    out.weight_level = "sequence"
    return out
