"""DRO: Direct Reward Optimization's quadratic log-ratio penalty (Richemond et al., "Offline
Regularised Reinforcement Learning for Large Language Models Alignment", arXiv 2405.19107;
verl ddfbf4ea0 / 0.9.1 ``compute_policy_loss_dro``):

    loss_t = -(A_t log pi_theta(y_t) - beta/2 (log pi_theta(y_t) - log pi_old(y_t))^2),

a policy gradient regularised towards pi_old. The gradient on log pi_theta is
``-A_t + beta (log pi_theta - log pi_old)``. Any mismatch correction multiplies the whole loss_t
(verl's ``rollout_is_weights`` do the same). The log-ratio is unclamped, as in verl (no exponent).
"""

from __future__ import annotations

from .batch import PolicyBatch, Surrogate
from .losses import POLICY_LOSSES, no_clipping
from .registry import Param, positive


@POLICY_LOSSES.register(
    "dro",
    source="DRO: arXiv 2405.19107; verl ddfbf4ea0 compute_policy_loss_dro",
    preset="configs/dro.yaml",
    formula="`-(A log pi_theta - beta/2 (log pi_theta - log pi_old)^2)`",
    gradient_weight="`1`, plus the penalty's `beta (log pi_theta - log pi_old)`",
    params=(Param("dro_beta", 0.05, "DRO: coefficient beta of the (log pi_theta - log pi_old)^2 / 2 penalty",
                  check=positive),),
)
def dro_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """loss_t = -(A_t log pi_theta - beta/2 (log pi_theta - log pi_old)^2)."""
    log_ratio = batch.raw_log_ratio
    loss = -(batch.advantages * batch.log_probs - 0.5 * cfg.params.dro_beta * log_ratio * log_ratio)
    return Surrogate(loss=loss, clipped=no_clipping(batch))
