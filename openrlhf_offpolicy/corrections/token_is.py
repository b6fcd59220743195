"""Token-level importance weights on the mismatch ratio rho_t = pi_old / pi_roll.

Both read a ``[low, high]`` band on rho_t (``vllm_is_truncated_threshold``).
"""

from __future__ import annotations

from .batch import Correction, PolicyBatch
from .gates import CORRECTIONS, token_gate, token_ratio
from .stats import in_band


@CORRECTIONS.register(
    "tis",
    legacy=True,
    preset="configs/tis.yaml",
    script="train_token_is.sh",
    statistic="`rho_t`",
    action="clamp to band",
    coefficient="`clamp(rho_t)`",
    source="TIS: Yao et al., 'Your Efficient RL Framework Secretly Brings You Off-Policy RL Training', 2025",
)
def truncated_is(batch: PolicyBatch, cfg) -> Correction:
    """Token TIS: ``c_t = clamp(rho_t, low, high)``; no token is dropped."""
    low, high = cfg.threshold
    rho = token_ratio(batch)
    clamped = ~in_band(rho, low, high) & batch.on
    nothing = clamped & False
    return Correction(coef=rho.clamp(min=low, max=high) * batch.mask, rejected=nothing, filtered=clamped)


@CORRECTIONS.register(
    "icepop",
    legacy=True,
    preset="configs/icepop.yaml",
    script="train_token_is.sh",
    statistic="`rho_t`",
    action="drop token outside band",
    coefficient="`rho_t`",
    source="IcePop: Ling Team, 'Every Step Evolves' (Ring-1T), arXiv 2510.18855",
)
def icepop(batch: PolicyBatch, cfg) -> Correction:
    """IcePop: tokens with rho_t outside ``[low, high]`` are dropped; kept tokens carry rho_t."""
    low, high = cfg.threshold
    rho = token_ratio(batch)
    return token_gate(batch, in_band(rho, low, high), rho)
