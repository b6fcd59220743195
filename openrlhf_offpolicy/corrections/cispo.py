"""CISPO: clipped IS-weight policy optimisation (MiniMax-M1 report, arXiv 2506.13585, §3.1).

Instead of clipping the token update (PPO, which drops the gradient of clipped tokens), CISPO
clips the importance weight and keeps every token in the gradient:
    loss_t = -sg(clamp(r_t, lo, hi)) * A_t * log pi_theta(y_t),   r_t = pi_theta / pi_old,
so the gradient weight is ``clamp(r_t, lo, hi)``. ``cispo_clip_range = (lo, hi)`` are absolute
bounds on r (the report uses no lower bound in practice: lo = 0).
"""

from __future__ import annotations

from .batch import PolicyBatch, Surrogate
from .losses import POLICY_LOSSES, lazy_token_mean
from .registry import Param, range_around_one


@POLICY_LOSSES.register(
    "cispo",
    source="CISPO: MiniMax, 'MiniMax-M1: Scaling Test-Time Compute Efficiently', arXiv 2506.13585",
    metrics=("cispo/clipped_frac",),
    preset="configs/cispo.yaml",
    script="train_cispo.sh",
    formula="`-sg(clamp(r, lo, hi)) A log pi_theta`",
    gradient_weight="`clamp(r, lo, hi)`",
    params=(
        Param(
            "cispo_clip_range",
            (0.0, 5.0),
            "CISPO absolute bounds (lo, hi) on the IS weight r = pi_theta/pi_old",
            nargs=2,
            check=range_around_one,
        ),
    ),
)
def cispo_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """loss_t = -sg(clamp(r_t, lo, hi)) A_t log pi_theta(y_t); gradient weight clamp(r_t, lo, hi)."""
    lo, hi = cfg.params.cispo_clip_range
    ratio = batch.log_ratio.detach().exp()
    clipped = (ratio < lo) | (ratio > hi)  # on every position; clip_ratio and the metric mask it
    loss = -ratio.clamp(min=lo, max=hi) * batch.advantages * batch.log_probs
    return Surrogate(loss=loss, clipped=clipped, metrics={"cispo/clipped_frac": lazy_token_mean(clipped, batch)})
