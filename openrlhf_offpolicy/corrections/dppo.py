"""DPPO: Divergence Proximal Policy Optimization (arXiv 2602.04879, "Rethinking the Trust Region
in LLM RL").

PPO's ratio clip is a single-sample estimate of a divergence and misbehaves on the long tail of
the vocabulary. DPPO masks a token only when the update moves it further out of the trust
region measured by a divergence D(mu(.|c_t), pi_theta(.|c_t)):
    M_t = 0  iff  (A_t > 0 and r_t > 1 and D_t > delta)  or  (A_t < 0 and r_t < 1 and D_t > delta)
    loss_t = -sg(min(r_t, C)) * M_t * A_t * log pi_theta(y_t),   r_t = pi_theta / mu,
with mu = pi_roll when rollout log-probs are given (the paper anchors on the rollout policy),
else pi_old. The gradient weight is ``M_t min(r_t, C)``. D is a lower bound of the true
divergence: ``binary_tv`` / ``binary_kl`` from the sampled token alone, ``topk_tv`` / ``topk_kl``
from the rollout top-K (``topk.py``). Paper thresholds: TV 0.15-0.2, KL 0.05.
"""

from __future__ import annotations

from .batch import PolicyBatch, Surrogate
from .divergences import DIVERGENCES
from .losses import POLICY_LOSSES, lazy_token_mean
from .registry import Param, at_least_one, positive
from .stats import safe_exp


def dppo_delta(cfg) -> float:
    """The configured delta, or the default of the chosen divergence."""
    if cfg.params.dppo_delta is not None:
        return cfg.params.dppo_delta
    return DIVERGENCES.get(cfg.params.dppo_divergence).dppo_delta


def dppo_mask(advantages, ratio, divergence, delta):
    """M_t: False where the update would push an already-diverged token further away."""
    outward = ((advantages > 0) & (ratio > 1)) | ((advantages < 0) & (ratio < 1))
    return ~(outward & (divergence > delta))


@POLICY_LOSSES.register(
    "dppo",
    accepts_correction=False,
    reads_rollout=True,
    divergence_param="dppo_divergence",
    source="DPPO: 'Rethinking the Trust Region in LLM RL', arXiv 2602.04879",
    metrics=("dppo/masked_frac",),
    preset="configs/dppo.yaml",
    variants=("configs/dppo_kl.yaml", "configs/dppo_topk.yaml"),
    script="train_dppo.sh",
    formula="`-sg(min(r_mu, C)) M_t A log pi_theta`, `r_mu = pi_theta / pi_roll`",
    gradient_weight="`M_t min(r_mu, C)`",
    params=(
        Param(
            "dppo_divergence",
            "binary_tv",
            "DPPO divergence between mu and pi_theta",
            type=str,
            choices=lambda: DIVERGENCES.names(for_dppo=True),
        ),
        Param(
            "dppo_delta",
            None,
            "DPPO trust-region threshold (default per divergence: binary_tv 0.15, binary_kl 0.05, "
            "topk_tv 0.2, topk_kl 0.05)",
            check=positive,
            optional=True,
        ),
        Param("dppo_ratio_cap", 5.0, "DPPO cap C on the IS weight pi_theta/mu", check=at_least_one),
    ),
)
def dppo_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """loss_t = -sg(min(r_t, C)) M_t A_t log pi_theta(y_t), r_t = pi_theta/mu; gradient weight M_t min(r_t, C)."""
    log_mu = batch.behaviour_log_probs
    log_pi = batch.log_probs.detach()
    ratio = safe_exp(log_pi - log_mu)
    divergence = DIVERGENCES.get(cfg.params.dppo_divergence).fn(log_mu, log_pi, batch.topk)
    keep = dppo_mask(batch.advantages, ratio, divergence, dppo_delta(cfg))
    weight = ratio.clamp(max=cfg.params.dppo_ratio_cap) * keep
    loss = -weight * batch.advantages * batch.log_probs
    masked = ~keep & batch.on
    return Surrogate(loss=loss, clipped=masked, metrics={"dppo/masked_frac": lazy_token_mean(masked, batch)})
