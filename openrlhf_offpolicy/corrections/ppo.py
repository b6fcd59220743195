"""Clipped surrogates: PPO (clip-higher, dual-clip), GSPO and GSPO-token.

PPO (Schulman et al., arXiv 1707.06347) with decoupled bounds (DAPO, arXiv 2503.14476) and
dual-clip (Ye et al., arXiv 1912.09729):
    loss_t = -min(r_t A_t, clip(r_t, 1 - eps_low, 1 + eps_high) A_t),  r_t = pi_theta / pi_old,
    and for A_t < 0 with dual-clip c: loss_t = min(loss_t, -c A_t).
GSPO (Zheng et al., arXiv 2507.18071) replaces r_t by the sequence ratio
    s_i = exp(mean_t log(pi_theta / pi_old))
and clips it per sequence. GSPO-token (same paper, §4.3) uses
    s_it = sg(s_i) * pi_theta(y_t) / sg(pi_theta(y_t)),
whose value is s_i on every token but whose gradient is s_i grad log pi_theta(y_t), so a
token-level advantage can be used; with A constant per sequence it equals GSPO exactly.
"""

from __future__ import annotations

from ._torch import torch

from .batch import PolicyBatch, Surrogate
from .losses import POLICY_LOSSES
from .stats import safe_exp, seq_mean


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, cfg) -> Surrogate:
    """PPO-clip of any ratio, with optional dual-clip; ``clipped`` marks tokens the clip bound."""
    surr1 = ratio * advantages
    surr2 = ratio.clamp(1 - cfg.clip_eps_low, 1 + cfg.clip_eps_high) * advantages
    loss = -torch.min(surr1, surr2)
    if cfg.dual_clip is not None:
        loss = torch.where(advantages < 0, torch.min(loss, -cfg.dual_clip * advantages), loss)
    return Surrogate(loss=loss, clipped=surr2 < surr1)


@POLICY_LOSSES.register(
    "ppo",
    ppo_clip=True,
    source="PPO arXiv 1707.06347; clip-higher arXiv 2503.14476; dual-clip arXiv 1912.09729",
    preset="configs/baseline.yaml",
    variants=("configs/lite_ppo.yaml", "configs/m2po.yaml"),
    script="train_baseline.sh",
    upstream_flags=("--actor.eps_clip_low_high", "--actor.dual_clip"),
    formula="`-min(r A, clip(r) A)`, clip-higher, dual-clip",
    gradient_weight="`r` inside the clip",
)
def ppo_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """Token PPO-clip of r_t = pi_theta / pi_old (clip-higher bounds, optional dual-clip)."""
    return clipped_surrogate(batch.log_ratio.exp(), batch.advantages, cfg)


def gspo_sequence_log_ratio(batch: PolicyBatch, anchor_log_probs: torch.Tensor) -> torch.Tensor:
    """log s_i = mean_t (log pi_theta - log anchor) over the tokens of sequence i, ``[B]``."""
    return seq_mean(batch.log_probs - anchor_log_probs, batch.mask)


@POLICY_LOSSES.register(
    "gspo",
    sequence_level=True,
    anchors_on_rollout=True,
    ppo_clip=True,
    source="GSPO: Zheng et al., arXiv 2507.18071",
    preset="configs/gspo.yaml",
    script="train_gspo.sh",
    formula="sequence clip of `s_i = exp(mean_t log r)` (upstream semantics: anchored on `pi_roll` when a correction "
    "is on)",
    gradient_weight="`s_i`",
)
def gspo_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """Sequence-level clip of s_i; with a correction enabled the anchor is pi_roll (upstream)."""
    anchor = batch.rollout_log_probs if cfg.anchor_on_rollout else batch.old_log_probs
    ratio = safe_exp(gspo_sequence_log_ratio(batch, anchor)).unsqueeze(-1) * batch.mask
    return clipped_surrogate(ratio, batch.advantages, cfg)


@POLICY_LOSSES.register(
    "gspo_token",
    sequence_level=True,
    ppo_clip=True,
    source="GSPO-token: Zheng et al., arXiv 2507.18071 §4.3",
    preset="configs/gspo_token.yaml",
    script="train_gspo.sh",
    formula="token clip of `sg(s_i) pi_theta / sg(pi_theta)`; takes any correction",
    gradient_weight="`s_i`",
)
def gspo_token_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """Token clip of s_it = sg(s_i) pi_theta / sg(pi_theta)."""
    seq_ratio = safe_exp(gspo_sequence_log_ratio(batch, batch.old_log_probs)).detach()
    unit_with_grad = torch.exp(batch.log_probs - batch.log_probs.detach())
    return clipped_surrogate(seq_ratio.unsqueeze(-1) * unit_with_grad, batch.advantages, cfg)
