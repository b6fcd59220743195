"""SAPO: Soft Adaptive Policy Optimization (Gao et al., Qwen team, arXiv 2511.20347).

The hard clip is replaced by a temperature-controlled sigmoid gate on r_t = pi_theta / pi_old:
    loss_t = -(4 / tau) * sigmoid(tau (r_t - 1)) * A_t,   tau = tau_pos if A_t > 0 else tau_neg.
Its gradient is -sech^2(tau (r_t - 1) / 2) * r_t * A_t * grad log pi_theta, i.e. the gradient
weight is ``r * sech^2(tau (r - 1) / 2)``: 1 on-policy and decaying smoothly off-policy, faster
for negative advantages (tau_neg > tau_pos). The paper aggregates seq-mean-token-mean
(``--actor.loss_agg_mode seq-mean-token-mean``).
"""

from __future__ import annotations

import torch

from .batch import PolicyBatch, Surrogate
from .losses import POLICY_LOSSES, no_clipping, token_mean
from .registry import Param, positive


def sapo_temperature(advantages: torch.Tensor, tau_pos: float, tau_neg: float) -> torch.Tensor:
    return torch.where(advantages > 0, tau_pos, tau_neg).to(advantages.dtype)


def sapo_gate_weight(ratio: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """sech^2(tau (r - 1) / 2) = 4 sigmoid(z) (1 - sigmoid(z)) with z = tau (r - 1)."""
    s = torch.sigmoid(tau * (ratio - 1))
    return 4 * s * (1 - s)


def _gate_mean(sigmoid: torch.Tensor, batch: PolicyBatch):
    """mean_t 4 s (1 - s) from the loss's own sigmoid s, read lazily: sapo/gate_mean."""
    s = sigmoid.detach()
    return lambda: token_mean(4 * s * (1 - s), batch)


@POLICY_LOSSES.register(
    "sapo",
    source="SAPO: Gao et al., 'Soft Adaptive Policy Optimization', arXiv 2511.20347",
    params=(
        Param("sapo_tau_pos", 1.0, "SAPO gate temperature for positive advantages", check=positive),
        Param("sapo_tau_neg", 1.05, "SAPO gate temperature for non-positive advantages", check=positive),
    ),
)
def sapo_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """loss_t = -(4/tau) sigmoid(tau (r_t - 1)) A_t; gradient weight r_t sech^2(tau (r_t - 1) / 2)."""
    ratio = batch.log_ratio.exp()
    tau = sapo_temperature(batch.advantages, cfg.sapo_tau_pos, cfg.sapo_tau_neg)
    gate = torch.sigmoid(tau * (ratio - 1))
    loss = -gate * (4.0 / tau) * batch.advantages
    return Surrogate(loss=loss, clipped=no_clipping(batch), metrics={"sapo/gate_mean": _gate_mean(gate, batch)})
