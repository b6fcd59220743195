"""VESPO: a gamma-shaped sequence weight on the policy gradient (arXiv 2602.10693).

With the sequence importance ratio w = pi_theta(y) / pi_old(y) (log w clamped to
[log 1e-8, 20], each token's log-ratio first clamped to [-20, 20]), every token is weighted by
    phi(w) = w^k exp(lambda (1 - w))        (phi(1) = 1, peak at w = k / lambda),
    loss_t = -sg(phi(w)) A_t log pi_theta(y_t),
with (k, lambda) = (k+, lambda+) for A_t >= 0 and (k-, lambda-) otherwise; the gradient weight is
phi(w). ``vespo_k = (k+, k-)``, ``vespo_lambda = (lambda+, lambda-)``, defaults TRL's (2, 3) and
(3, 2). Aggregated token-mean, as TRL does.

TRL 1.16.0's ``vespo`` loss is the same: outputs and gradients equal. TRL adds the log of its
vLLM token IS ratio into log w; here a correction multiplies its coefficient into the per-token
loss, as for every loss.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

from ._torch import torch

from .batch import PolicyBatch, Surrogate
from .losses import POLICY_LOSSES, lazy_token_mean, no_clipping
from .registry import Param
from .stats import broadcast_seq, seq_sum

LOG_W_MIN = math.log(1e-8)
LOG_W_MAX = 20.0


def positive_pair(value: Tuple[float, float]) -> Optional[str]:
    return None if min(value) > 0 else "both values must be > 0"


def vespo_weight(log_w: torch.Tensor, k: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """phi(w) = exp(lambda + k log w - lambda w), 0 where it underflows or is not finite."""
    phi = torch.exp(lam + k * log_w - lam * log_w.exp())
    return torch.nan_to_num(phi, nan=0.0, posinf=0.0, neginf=0.0)


@POLICY_LOSSES.register(
    "vespo",
    source="VESPO: arXiv 2602.10693",
    metrics=("vespo/phi_mean",),
    preset="configs/vespo.yaml",
    formula="`-sg(phi(w)) A log pi_theta`, `phi(w) = w^k exp(lambda (1 - w))`, `w = pi_theta(y)/pi_old(y)`",
    gradient_weight="`phi(w)`",
    params=(
        Param("vespo_k", (2.0, 3.0), "VESPO exponents (k+, k-) for A >= 0 and A < 0", nargs=2, check=positive_pair,
              metavar=("POS", "NEG")),
        Param(
            "vespo_lambda", (3.0, 2.0), "VESPO rates (lambda+, lambda-) for A >= 0 and A < 0", nargs=2,
            check=positive_pair, metavar=("POS", "NEG"),
        ),
    ),
)
def vespo_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """loss_t = -sg(phi(w)) A_t log pi_theta(y_t); gradient weight phi(w)."""
    k_pos, k_neg = cfg.params.vespo_k
    lam_pos, lam_neg = cfg.params.vespo_lambda
    log_w = seq_sum(batch.log_ratio.detach(), batch.mask).clamp(min=LOG_W_MIN, max=LOG_W_MAX)
    nonneg = batch.advantages >= 0
    k = torch.where(nonneg, k_pos, k_neg).to(batch.log_probs.dtype)
    lam = torch.where(nonneg, lam_pos, lam_neg).to(batch.log_probs.dtype)
    phi = vespo_weight(broadcast_seq(log_w, batch.mask), k, lam)
    loss = -phi * batch.advantages * batch.log_probs
    return Surrogate(loss=loss, clipped=no_clipping(batch), metrics={"vespo/phi_mean": lazy_token_mean(phi, batch)})
