"""prime-rl's default loss (prime-rl 559b447, ``src/prime_rl/trainer/rl/loss.py``): a DPPO
probability-difference mask on the rollout-anchored ratio plus a squared log-ratio penalty, and its
IPO variant with a symmetric mask.

    loss_t = -M_t A_t r_mu + tau (log pi_theta - log pi_roll)^2,   r_mu = pi_theta / pi_roll,

where r_mu carries the gradient and, with p = exp(log-prob) detached:

    prime_dppo  M_t = 0 iff (A_t > 0 and p_theta - p_roll > delta_high)
                         or (A_t <= 0 and p_theta - p_roll < -delta_low)
    ipo         M_t = 0 iff |p_theta - p_roll| > delta

Papers: DPPO-Binary TV (arXiv 2602.04879), the KL penalty of Kimi K2.5 (arXiv 2602.02276). The
gradient on log pi_theta is ``-M_t A_t r_mu + 2 tau (log pi_theta - log pi_roll)``. Anchored on
pi_roll (pi_old when no rollout log-probs are given), so a mismatch correction is refused.
prime-rl's ``importance_ratio`` is unclamped; ours clamps the log-ratio at +-20 (identical below).
"""

from __future__ import annotations

from ._torch import torch

from .batch import PolicyBatch, Surrogate
from .losses import POLICY_LOSSES, lazy_token_mean
from .registry import Param, non_negative, positive
from .stats import safe_exp

SOURCE = ("prime-rl 559b447 src/prime_rl/trainer/rl/loss.py; DPPO arXiv 2602.04879; "
          "Kimi K2.5 KL penalty arXiv 2602.02276")


def pair_non_negative(value):
    return None if min(value) >= 0 else "both deltas must be >= 0"


def penalised_masked_ratio_loss(batch: PolicyBatch, masked: torch.Tensor, tau: float, name: str) -> Surrogate:
    """-M_t A_t r_mu + tau (log pi_theta - log pi_roll)^2, with M_t = ~masked."""
    log_ratio = batch.log_probs - batch.behaviour_log_probs
    ratio = safe_exp(log_ratio)
    loss = -(~masked).to(ratio.dtype) * batch.advantages * ratio + tau * log_ratio * log_ratio
    masked = masked & batch.on
    return Surrogate(loss=loss, clipped=masked, metrics={f"{name}/masked_frac": lazy_token_mean(masked, batch)})


def probability_difference(batch: PolicyBatch) -> torch.Tensor:
    """p_theta - p_roll of the sampled token (detached; a log-prob above 0 counts as probability 1)."""
    return batch.log_probs.detach().clamp(max=0.0).exp() - batch.behaviour_log_probs.clamp(max=0.0).exp()


@POLICY_LOSSES.register(
    "prime_dppo",
    accepts_correction=False,
    reads_rollout=True,
    source=SOURCE,
    metrics=("prime_dppo/masked_frac",),
    preset="configs/prime_dppo.yaml",
    formula="`-M_t A r_mu + tau (log pi_theta - log pi_roll)^2`, `M_t` the sign-aware probability-difference mask",
    gradient_weight="`M_t r_mu`, plus the penalty's `2 tau (log pi_theta - log pi_roll)`",
    params=(
        Param("prime_dppo_delta", (0.2, 0.2), "prime-rl DPPO: probability-difference thresholds (LOW, HIGH)",
              nargs=2, check=pair_non_negative, metavar=("LOW", "HIGH")),
        Param("prime_dppo_tau", 1e-3, "prime-rl DPPO: coefficient of the (log pi_theta - log pi_roll)^2 penalty",
              check=non_negative),
    ),
)
def prime_dppo_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """loss_t = -M_t A_t r_mu + tau (log pi_theta - log pi_roll)^2 with prime-rl's sign-aware mask."""
    low, high = cfg.params.prime_dppo_delta
    diff = probability_difference(batch)
    masked = torch.where(batch.advantages > 0, diff > high, diff < -low)
    return penalised_masked_ratio_loss(batch, masked, cfg.params.prime_dppo_tau, "prime_dppo")


@POLICY_LOSSES.register(
    "ipo",
    accepts_correction=False,
    reads_rollout=True,
    source=SOURCE + " (IPO trust region)",
    metrics=("ipo/masked_frac",),
    preset="configs/ipo.yaml",
    formula="`-M_t A r_mu + tau (log pi_theta - log pi_roll)^2`, `M_t = 1[abs(p_theta - p_roll) <= delta]`",
    gradient_weight="`M_t r_mu`, plus the penalty's `2 tau (log pi_theta - log pi_roll)`",
    params=(
        Param("ipo_delta", 0.1, "IPO: mask a token when |p_theta - p_roll| > delta", check=positive),
        Param("ipo_tau", 1e-3, "IPO: coefficient of the (log pi_theta - log pi_roll)^2 penalty", check=non_negative),
    ),
)
def ipo_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """loss_t = -M_t A_t r_mu + tau (log pi_theta - log pi_roll)^2, M_t = 0 iff |p_theta - p_roll| > delta."""
    masked = probability_difference(batch).abs() > cfg.params.ipo_delta
    return penalised_masked_ratio_loss(batch, masked, cfg.params.ipo_tau, "ipo")
