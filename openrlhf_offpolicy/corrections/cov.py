"""Clip-Cov and KL-Cov: entropy control through the covariance of log-prob and advantage
(Cui et al., 'The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models',
arXiv 2505.22617).

The paper shows that policy entropy falls in proportion to the covariance between a token's
log-probability and its advantage, and that a tiny fraction of tokens with a large covariance
drives the collapse. Both methods act on those tokens only. Per valid token of the loss call,
    cov_t = (A_t - mean(A)) (log pi_theta(y_t) - mean(log pi_theta)),
means over the valid tokens of the call (detached).

Clip-Cov: among the tokens PPO's clip leaves alone with ``clip_cov_lb < cov_t < clip_cov_ub``,
``max(1, floor(clip_cov_ratio N))`` tokens drawn uniformly at random (``torch.randperm`` on the
global generator, N the valid tokens) lose their gradient; everything else is PPO-clip:
    loss_t = -min(r_t A_t, clip(r_t) A_t) * (1 - 1[t selected]).
KL-Cov: the ``max(1, floor(kl_cov_ratio N))`` tokens with the largest cov_t get a KL penalty
instead of any clip, all other tokens get the unclipped surrogate:
    loss_t = -r_t A_t + kl_cov_coef |log r_t| 1[t selected].

Both equal verl 0.9.1's ``clip_cov`` / ``kl_cov`` (for Clip-Cov: with the same torch seed, since
the tokens are drawn in the same row-major order with the same ``randperm`` call). The means and
the count are over one loss call, as in verl: with micro-batches the selection depends on the
split (no global normaliser changes that).
"""

from __future__ import annotations

from typing import Optional

from ._torch import torch

from .batch import PolicyBatch, Surrogate
from .losses import POLICY_LOSSES, lazy_token_mean
from .ppo import clipped_surrogate
from .registry import Param, scale_in, unit_interval


def token_covariance(batch: PolicyBatch) -> torch.Tensor:
    """cov_t = (A_t - mean A)(log pi_theta - mean log pi_theta) over the valid tokens (detached)."""
    log_probs = batch.log_probs.detach()
    mean_adv = (batch.advantages * batch.mask).sum() / batch.n_tokens
    mean_lp = (log_probs * batch.mask).sum() / batch.n_tokens
    return (batch.advantages - mean_adv) * (log_probs - mean_lp)


def selection_count(ratio: float, n_valid: int) -> int:
    return max(1, int(ratio * n_valid))


def unit_fraction(value: float) -> Optional[str]:
    return None if 0.0 < value <= 1.0 else "must lie in (0, 1]"


def _check_clip_cov(cfg) -> None:
    if not cfg.params.clip_cov_lb < cfg.params.clip_cov_ub:
        raise ValueError(
            f"clip_cov needs clip_cov_lb < clip_cov_ub, got {cfg.params.clip_cov_lb}, {cfg.params.clip_cov_ub}"
        )


@POLICY_LOSSES.register(
    "clip_cov",
    validate=_check_clip_cov,
    ppo_clip=True,
    split_invariant=False,
    source="Clip-Cov: Cui et al., 'The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models', "
    "arXiv 2505.22617",
    metrics=("clip_cov/selected_frac",),
    preset="configs/clip_cov.yaml",
    formula="PPO-clip with the gradient of `max(1, ratio N)` random tokens of covariance in (lb, ub) removed",
    gradient_weight="`r` inside the clip, 0 on selected tokens",
    params=(
        Param("clip_cov_ratio", 0.0002, "Clip-Cov fraction of valid tokens whose gradient is removed",
              check=unit_fraction),
        Param("clip_cov_lb", 1.0, "Clip-Cov lower bound of the covariance of a selectable token"),
        Param("clip_cov_ub", 5.0, "Clip-Cov upper bound of the covariance of a selectable token"),
    ),
)
def clip_cov_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """PPO-clip; a random max(1, ratio N) of the unclipped tokens with lb < cov_t < ub get no gradient."""
    ppo = clipped_surrogate(batch.log_ratio.exp(), batch.advantages, cfg)
    clipped = ppo.clipped & batch.on
    cov = token_covariance(batch)
    candidates = torch.nonzero(
        batch.on & ~clipped & (cov > cfg.params.clip_cov_lb) & (cov < cfg.params.clip_cov_ub)
    )
    selected = torch.zeros_like(batch.on)
    if len(candidates) > 0:
        count = selection_count(cfg.params.clip_cov_ratio, int(batch.mask.sum().item()))
        chosen = candidates[torch.randperm(len(candidates))[:count].to(candidates.device)]
        selected[chosen[:, 0], chosen[:, 1]] = True
    loss = ppo.loss * (~selected).to(ppo.loss.dtype)
    return Surrogate(
        loss=loss, clipped=clipped | selected, metrics={"clip_cov/selected_frac": lazy_token_mean(selected, batch)}
    )


@POLICY_LOSSES.register(
    "kl_cov",
    split_invariant=False,
    source="KL-Cov: Cui et al., 'The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models', "
    "arXiv 2505.22617",
    metrics=("kl_cov/selected_frac",),
    preset="configs/kl_cov.yaml",
    formula="`-r A`, plus `coef abs(log r)` on the `max(1, ratio N)` tokens of largest covariance",
    gradient_weight="`r` (selected tokens: plus the KL term's `coef sign(log r)`)",
    params=(
        Param("kl_cov_ratio", 0.0002, "KL-Cov fraction of valid tokens (largest covariance) that get the KL penalty",
              check=unit_fraction),
        Param("kl_cov_coef", 1.0, "KL-Cov coefficient of the |log r| penalty", check=scale_in(1e-30, 1e6)),
    ),
)
def kl_cov_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """loss_t = -r_t A_t, plus kl_cov_coef |log r_t| on the max(1, ratio N) tokens of largest cov_t."""
    log_ratio = batch.log_ratio
    loss = -log_ratio.exp() * batch.advantages
    selected = torch.zeros_like(batch.on)
    n_valid = int(batch.mask.sum().item())
    if n_valid > 0:
        valid_index = torch.nonzero(batch.on.reshape(-1), as_tuple=True)[0]
        cov = token_covariance(batch).reshape(-1)[valid_index]
        top = torch.topk(cov, selection_count(cfg.params.kl_cov_ratio, n_valid), largest=True).indices
        selected.view(-1)[valid_index[top]] = True
    loss = loss + cfg.params.kl_cov_coef * log_ratio.abs() * selected
    return Surrogate(loss=loss, clipped=selected, metrics={"kl_cov/selected_frac": lazy_token_mean(selected, batch)})
