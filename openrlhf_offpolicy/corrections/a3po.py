"""A-3PO: PPO against an interpolated proximal policy, without the old-log-prob recompute
(arXiv 2512.06547; AReaL cbff54d ``compute_prox_logp_approximations``, log-linear method).

Decoupled PPO (the behaviour policy pi_roll samples, a proximal policy pi_prox anchors the clip)
needs pi_prox's log-probs, normally an extra forward pass. A-3PO interpolates them in log space
between the behaviour policy and the current one:

    log pi_prox = log pi_roll + alpha (sg(log pi_theta) - log pi_roll)
    r_t  = pi_theta / pi_prox   (value exp((1 - alpha)(log pi_theta - log pi_roll)), gradient r_t)
    w_t  = sg(pi_prox / pi_roll) = sg(exp(alpha (log pi_theta - log pi_roll)))   (behaviour weight)
    loss_t = -min(r_t A_t, clip(r_t, 1 - eps_low, 1 + eps_high) A_t) * w_t * 1[w_t <= cap]

plus upstream's dual clip on the PPO term. Parameters: ``a3po_alpha`` in [0, 1] (0: pi_prox =
pi_roll, plain PPO on the rollout policy; 1: pi_prox = pi_theta), or ``versions``: per sample
from the policy versions the async path records,

    alpha = (v_prox - v_behave) / (v_theta - v_behave),  v_prox = v_theta - 1,

clamped to [0, 1] and 0 when v_theta <= v_behave (a fresh sample: pi_prox = pi_roll); with the
version lag s = v_theta - v_behave that is ``1 - 1/s`` for s >= 1. ``a3po_behave_cap`` masks
tokens whose behaviour weight exceeds it (AReaL's ``behave_imp_weight_cap``). The loss is
anchored on pi_roll, so a mismatch correction is refused; in the OpenRLHF integration it runs in
bypass mode (pi_old := pi_roll, no old-log-prob forward).
"""

from __future__ import annotations

from typing import Any, Optional

from ._torch import torch

from .batch import PolicyBatch, Surrogate
from .losses import POLICY_LOSSES, lazy_token_mean
from .ppo import clipped_surrogate
from .registry import Param, float32_problem
from .stats import safe_exp

VERSIONS = "versions"


def alpha_or_versions(value: Any):
    """``--a3po_alpha``: a number, or the word ``versions``."""
    if isinstance(value, str) and value.strip().lower() == VERSIONS:
        return VERSIONS
    if isinstance(value, bool):
        raise ValueError(f"a3po_alpha must be a number in [0, 1] or 'versions', got {value!r}")
    return float(value)


alpha_or_versions.__name__ = "number or 'versions'"


def check_alpha(value) -> Optional[str]:
    if value == VERSIONS:
        return None
    return float32_problem(value) or (None if 0.0 <= value <= 1.0 else "must lie in [0, 1] (or be 'versions')")


def check_cap(value: float) -> Optional[str]:
    return None if value > 1.0 else "must be > 1"


def alpha_from_version_lag(lag: torch.Tensor) -> torch.Tensor:
    """alpha = (v_prox - v_behave)/(v_theta - v_behave) with v_prox = v_theta - 1, in [0, 1]; 0 when
    the lag s = v_theta - v_behave is <= 0. Equals ``1 - 1/s`` for s >= 1."""
    lag = lag.to(torch.float64)
    alpha = (lag - 1.0) / lag.clamp(min=1.0)
    return torch.where(lag > 0, alpha.clamp(0.0, 1.0), torch.zeros_like(alpha))


def a3po_alpha(batch: PolicyBatch, cfg) -> torch.Tensor:
    """alpha as a scalar tensor, or ``[B, 1]`` per sample from ``batch.version_lag``."""
    alpha = cfg.params.a3po_alpha
    if alpha != VERSIONS:
        return torch.tensor(alpha, dtype=batch.log_probs.dtype, device=batch.log_probs.device)
    if batch.version_lag is None:
        raise ValueError("a3po_alpha='versions' needs each sample's policy-version lag: pass "
                         "policy_version_lag=[B] to PolicyLoss.forward (the async integration does)")
    lag = torch.as_tensor(batch.version_lag, device=batch.log_probs.device).reshape(-1)
    if lag.numel() != batch.log_probs.shape[0]:
        raise ValueError(f"policy_version_lag has {lag.numel()} entries for {batch.log_probs.shape[0]} samples")
    return alpha_from_version_lag(lag).to(batch.log_probs.dtype).unsqueeze(-1)


@POLICY_LOSSES.register(
    "a3po",
    accepts_correction=False,
    reads_rollout=True,
    ppo_clip=True,
    bypass=True,
    source="A-3PO: arXiv 2512.06547; AReaL cbff54d compute_prox_logp_approximations (loglinear)",
    metrics=("a3po/behave_masked_frac", "a3po/alpha"),
    preset="configs/a3po.yaml",
    formula="PPO clip of `r = pi_theta / pi_prox`, `log pi_prox = log pi_roll + alpha (sg(log pi_theta) - "
            "log pi_roll)`, times `w = sg(pi_prox / pi_roll)` where `w <= cap`",
    gradient_weight="`r w 1[w <= cap]` inside the clip",
    params=(
        Param("a3po_alpha", 0.5, "A-3PO interpolation alpha in [0, 1] of the proximal policy between pi_roll (0) "
              "and pi_theta (1), or 'versions': per sample from the policy-version lag s, alpha = 1 - 1/s",
              type=alpha_or_versions, check=check_alpha),
        Param("a3po_behave_cap", 5.0, "A-3PO: mask tokens whose behaviour weight pi_prox/pi_roll exceeds this cap",
              check=check_cap),
    ),
)
def a3po_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """PPO clip of r_t = pi_theta/pi_prox times w_t = sg(pi_prox/pi_roll), tokens with w_t > cap masked."""
    alpha = a3po_alpha(batch, cfg)
    log_roll = batch.behaviour_log_probs
    drift = batch.log_probs.detach() - log_roll  # log pi_theta - log pi_roll, detached
    log_prox = log_roll + alpha * drift
    ratio = safe_exp(batch.log_probs - log_prox)
    weight = safe_exp(alpha * drift)
    keep = weight <= cfg.params.a3po_behave_cap
    ppo = clipped_surrogate(ratio, batch.advantages, cfg)
    masked = ~keep & batch.on
    alpha_tokens = alpha.expand_as(batch.log_probs) if alpha.dim() else alpha.expand(batch.log_probs.shape)
    return Surrogate(loss=ppo.loss * torch.where(keep, weight, torch.zeros_like(weight)), clipped=ppo.clipped,
                     metrics={"a3po/behave_masked_frac": lazy_token_mean(masked, batch),
                              "a3po/alpha": lazy_token_mean(alpha_tokens, batch)})
