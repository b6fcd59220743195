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
    return torch.where(advantages > 0, torch.full_like(advantages, tau_pos), torch.full_like(advantages, tau_neg))


def sapo_gate_weight(ratio: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """sech^2(tau (r - 1) / 2) = 4 sigmoid(z) (1 - sigmoid(z)) with z = tau (r - 1)."""
    s = torch.sigmoid(tau * (ratio - 1))
    return 4 * s * (1 - s)


@POLICY_LOSSES.register(
    "sapo",
    source="SAPO: Gao et al., 'Soft Adaptive Policy Optimization', arXiv 2511.20347",
    metrics=("sapo/gate_mean",),
    preset="configs/sapo.yaml",
    script="train_soft_gate.sh",
    formula="`-(4/tau) sigmoid(tau (r-1)) A`",
    gradient_weight="`r sech^2(tau (r-1)/2)`",
    params=(
        Param("sapo_tau_pos", 1.0, "SAPO gate temperature for positive advantages", check=positive),
        Param("sapo_tau_neg", 1.05, "SAPO gate temperature for non-positive advantages", check=positive),
    ),
)
def sapo_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """loss_t = -(4/tau) sigmoid(tau (r_t - 1)) A_t; gradient weight r_t sech^2(tau (r_t - 1) / 2)."""
    ratio = batch.log_ratio.exp()
    tau = sapo_temperature(batch.advantages, cfg.params.sapo_tau_pos, cfg.params.sapo_tau_neg)
    loss = -(4.0 / tau) * torch.sigmoid(tau * (ratio - 1)) * batch.advantages
    gate = sapo_gate_weight(ratio.detach(), tau)
    return Surrogate(loss=loss, clipped=no_clipping(batch), metrics={"sapo/gate_mean": token_mean(gate, batch)})
