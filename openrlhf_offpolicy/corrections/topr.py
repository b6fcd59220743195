"""TOPR: Tapered Off-Policy REINFORCE (Le Roux et al., arXiv 2503.14286, eq. 8; ROLL
``_compute_topr_loss``).

Positive samples get a plain SFT-like update, negative ones a truncated importance weight in [0, 1]:

    loss_t = -w_t A_t log pi_theta(y_t),   w_t = 1 if A_t >= 0 else sg(min(r_t, 1)),   r_t = pi_theta / pi_old.

The gradient weight is w_t. Any mismatch correction multiplies loss_t. ROLL's function cannot be
imported without its framework; the tests check the formula as read there.
"""

from __future__ import annotations

from ._torch import torch

from .batch import PolicyBatch, Surrogate
from .losses import POLICY_LOSSES, lazy_token_mean


@POLICY_LOSSES.register(
    "topr",
    source="TOPR: arXiv 2503.14286; ROLL _compute_topr_loss",
    metrics=("topr/truncated_frac",),
    preset="configs/topr.yaml",
    formula="`-w A log pi_theta`, `w = 1` if `A >= 0` else `sg(min(r, 1))`",
    gradient_weight="`1` (A >= 0), `min(r, 1)` (A < 0)",
)
def topr_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """loss_t = -w_t A_t log pi_theta, w_t = 1 for A_t >= 0 else sg(min(r_t, 1))."""
    ratio = batch.log_ratio.detach().exp()
    negative = batch.advantages < 0
    weight = torch.where(negative, ratio.clamp(max=1.0), torch.ones_like(ratio))
    truncated = negative & (ratio > 1.0) & batch.on
    return Surrogate(loss=-weight * batch.advantages * batch.log_probs, clipped=truncated,
                     metrics={"topr/truncated_frac": lazy_token_mean(truncated, batch)})
