"""The mismatch-correction registry and the two gate shapes every correction is built from.

A correction reads the detached mismatch ratio ``rho_t = pi_old / pi_roll`` (or a divergence)
and returns a ``Correction``: a detached coefficient ``c_t`` that multiplies the per-token policy
loss. Registered functions share one signature, ``fn(batch: PolicyBatch, cfg) -> Correction``.

Registration meta:
    threshold  "ratio": reads the ``[low, high]`` band as bounds on a ratio (0 <= low <= 1 <= high);
               "divergence": reads it as ``[0, delta]`` on a divergence; None: ignores it.
    legacy     accepted together with ``policy_loss_type="gspo"``, which (like upstream) anchors its
               sequence ratio on pi_roll and applies no coefficient.
    hidden     reachable through upstream's ``is_correction_*`` kwargs but not listed as a
               ``--vllm_is_correction_type`` choice.
"""

from __future__ import annotations

import torch

from .batch import Correction, PolicyBatch
from .registry import Registry
from .stats import broadcast_seq

CORRECTIONS = Registry("correction", defaults={"threshold": "ratio", "legacy": False, "hidden": False})

NO_CORRECTION = "none"


@CORRECTIONS.register(NO_CORRECTION, threshold=None, legacy=True, hidden=True)
def no_correction(batch: PolicyBatch, cfg) -> Correction:
    """Identity: c_t = 1 on every action token."""
    nothing = torch.zeros_like(batch.mask, dtype=torch.bool)
    return Correction(coef=batch.mask, rejected=nothing, filtered=nothing)


def token_gate(batch: PolicyBatch, keep: torch.Tensor, weight: torch.Tensor) -> Correction:
    """Reject tokens where ``keep`` is False; kept tokens carry ``weight``. ``keep`` is ``[B, T]``."""
    keep = keep & batch.on
    rejected = ~keep & batch.on
    return Correction(coef=torch.where(keep, weight, torch.zeros_like(weight)), rejected=rejected, filtered=rejected)


def sequence_gate(batch: PolicyBatch, keep_seq: torch.Tensor, weight: torch.Tensor) -> Correction:
    """Reject whole sequences where ``keep_seq`` (``[B]``) is False; kept tokens carry ``weight``."""
    keep = broadcast_seq(keep_seq, batch.mask) & batch.on
    rejected = ~keep & batch.on
    return Correction(
        coef=torch.where(keep, weight, torch.zeros_like(weight)),
        rejected=rejected,
        filtered=~keep_seq,
    )


def token_ratio(batch: PolicyBatch) -> torch.Tensor:
    """rho_t = pi_old / pi_roll per token (detached; ``log_rho`` is already clamped)."""
    return batch.log_rho.exp()
