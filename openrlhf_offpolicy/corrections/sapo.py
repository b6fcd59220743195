"""SAPO: Soft Adaptive Policy Optimization (Gao et al., Qwen team, arXiv 2511.20347).

The hard clip is replaced by a temperature-controlled sigmoid gate on r_t = pi_theta / pi_old:
    loss_t = -(4 / tau) * sigmoid(tau (r_t - 1)) * A_t,   tau = tau_pos if A_t > 0 else tau_neg.
Its gradient is -sech^2(tau (r_t - 1) / 2) * r_t * A_t * grad log pi_theta, i.e. the gradient
weight is ``r * sech^2(tau (r - 1) / 2)``: 1 on-policy and decaying smoothly off-policy, faster
for negative advantages (tau_neg > tau_pos). The paper aggregates seq-mean-token-mean
(``--actor.loss_agg_mode seq-mean-token-mean``).
"""

from __future__ import annotations

from functools import partial

from ._torch import torch

from .batch import PolicyBatch, Surrogate
from .losses import POLICY_LOSSES, no_clipping, token_mean
from .registry import Param, positive, scale_in


def _choose(condition: torch.Tensor, if_true: float, if_false: float, like: torch.Tensor) -> torch.Tensor:
    """``where(condition, if_true, if_false)`` in ``like``'s dtype (0-d operands: no full-size fills)."""
    return torch.where(condition, torch.tensor(if_true, dtype=like.dtype, device=like.device),
                       torch.tensor(if_false, dtype=like.dtype, device=like.device))


def _gate_mean(sigmoid: torch.Tensor, batch: PolicyBatch):
    """mean_t 4 s (1 - s) from the loss's own sigmoid s, read lazily: sapo/gate_mean."""
    return partial(_gate_mean_value, sigmoid.detach(), batch)  # picklable, unlike a lambda


def _gate_mean_value(s: torch.Tensor, batch: PolicyBatch):
    return token_mean(4 * s * (1 - s), batch)


@POLICY_LOSSES.register(
    "sapo",
    source="SAPO: Gao et al., 'Soft Adaptive Policy Optimization', arXiv 2511.20347",
    metrics=("sapo/gate_mean",),
    preset="configs/sapo.yaml",
    script="train_soft_gate.sh",
    formula="`-(4/tau) sigmoid(tau (r-1)) A`",
    gradient_weight="`r sech^2(tau (r-1)/2)`",
    params=(
        Param("sapo_tau_pos", 1.0, "SAPO gate temperature for positive advantages", check=scale_in(1e-6, 1e6)),
        Param("sapo_tau_neg", 1.05, "SAPO gate temperature for non-positive advantages", check=scale_in(1e-6, 1e6)),
    ),
)
def sapo_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """loss_t = -(4/tau) sigmoid(tau (r_t - 1)) A_t; gradient weight r_t sech^2(tau (r_t - 1) / 2)."""
    ratio = batch.log_ratio.exp()
    positive = batch.advantages > 0
    tau = _choose(positive, cfg.params.sapo_tau_pos, cfg.params.sapo_tau_neg, ratio)
    gate = torch.sigmoid(tau * (ratio - 1))
    # -(4 / tau) A is a constant of the gradient: one multiplication stays in the autograd graph.
    scale = _choose(positive, -4.0 / cfg.params.sapo_tau_pos, -4.0 / cfg.params.sapo_tau_neg, ratio)
    loss = gate * (scale * batch.advantages)
    return Surrogate(loss=loss, clipped=no_clipping(batch), metrics={"sapo/gate_mean": _gate_mean(gate, batch)})
