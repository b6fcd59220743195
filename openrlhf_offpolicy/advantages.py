"""REINFORCE-max advantages: the seed fork's "ProMax" estimator (``--algo.advantage.estimator
reinforce_max``). Pure torch; the integration calls ``reinforce_max_advantages``.

Within each prompt group of n samples (contiguous in ``rewards``):
  1. RLOO baseline (Kool et al., "Buy 4 REINFORCE Samples, Get a Baseline for Free!", 2019;
     Ahmadian et al., arXiv 2402.14740): A_i = r_i - mean_{j != i} r_j, spread over the
     sample's action tokens. With ``uniform_scale`` a group whose rewards are all equal gets
     A_i = r_i / n instead of 0, so it still carries a (uniform) signal.
  2. Per-group rescaling over the group's non-zero action tokens: with S+ / S- the sums of the
     positive / negative token advantages, Q+ / Q- their sums of squares and N their count,
         alpha = sqrt(N / (Q+ + (S+/S-)^2 Q-)),   beta = -alpha S+ / S-,
     positive advantages are multiplied by alpha and negative ones by beta. Then
     alpha S+ + beta S- = 0 and alpha^2 Q+ + beta^2 Q- = N: over its non-zero tokens each group
     has mean 0 and variance 1, with the sign of every advantage kept (unlike a shift by the
     mean). alpha and beta are clamped to [1e-8, 10]; a group whose non-zero advantages all
     have one sign (or that has none) is left unchanged.
"""

from __future__ import annotations

import torch

SCALE_MIN = 1e-8
SCALE_MAX = 10.0


def rloo_advantages(rewards: torch.Tensor, group_size: int, uniform_scale: bool = False) -> torch.Tensor:
    """A_i = r_i - mean of the other rewards of its group, ``[B]`` (``uniform_scale``: r_i / n in flat groups)."""
    groups = rewards.reshape(-1, group_size)
    baseline = (groups.sum(dim=-1, keepdim=True) - groups) / (group_size - 1)
    advantages = groups - baseline
    if uniform_scale:
        flat = (groups == groups[:, :1]).all(dim=-1, keepdim=True)
        advantages = torch.where(flat, groups / group_size, advantages)
    return advantages.reshape(-1)


def reinforce_max_advantages(
    rewards: torch.Tensor, action_mask: torch.Tensor, group_size: int, uniform_scale: bool = False
) -> torch.Tensor:
    """Token advantages ``[B, T]`` from rewards ``[B]`` (each prompt's ``group_size`` samples contiguous).

    ``action_mask`` ``[B, T]`` marks each sample's action tokens; advantages are 0 elsewhere.
    A NaN or infinite reward is a ValueError naming the sample (it would turn its whole group NaN).
    The arithmetic runs in float64, so a huge finite reward (3e38 in float32) gives finite advantages.
    """
    if rewards.dim() != 1 or action_mask.dim() != 2 or action_mask.shape[0] != rewards.shape[0]:
        raise ValueError(
            f"need rewards [B] and action_mask [B, T], got {tuple(rewards.shape)} and {tuple(action_mask.shape)}"
        )
    if group_size < 2 or rewards.shape[0] % group_size:
        raise ValueError(f"group_size must be >= 2 and divide the batch ({rewards.shape[0]}), got {group_size}")
    finite = torch.isfinite(rewards)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise ValueError(f"reinforce_max: reward {float(rewards[bad])} of sample {bad} (group {bad // group_size}) "
                         "is not finite; fix the reward function")
    out_dtype = torch.promote_types(rewards.dtype, torch.float32)
    dtype = torch.float64  # squares of rewards near float32's max overflow float32
    mask = action_mask.to(dtype)
    tokens = rloo_advantages(rewards.to(dtype), group_size, uniform_scale).unsqueeze(-1) * mask  # [B, T]

    grouped = tokens.reshape(-1, group_size * tokens.shape[-1])  # [G, n*T]
    pos, neg = grouped.clamp(min=0), grouped.clamp(max=0)
    s_pos, s_neg = pos.sum(-1), neg.sum(-1)
    q_pos, q_neg = (pos * pos).sum(-1), (neg * neg).sum(-1)
    count = (grouped != 0).sum(-1).to(dtype)
    mixed = (s_pos > 0) & (s_neg < 0)
    ratio = torch.where(mixed, s_pos / torch.where(mixed, s_neg, -1.0), torch.zeros_like(s_pos))  # S+/S- < 0
    alpha = torch.sqrt(count / torch.where(mixed, q_pos + ratio * ratio * q_neg, torch.ones_like(q_pos)))
    beta = -alpha * ratio
    alpha = torch.where(mixed, alpha.clamp(SCALE_MIN, SCALE_MAX), torch.ones_like(alpha))
    beta = torch.where(mixed, beta.clamp(SCALE_MIN, SCALE_MAX), torch.ones_like(beta))
    scaled = (pos * alpha.unsqueeze(-1) + neg * beta.unsqueeze(-1)).reshape(tokens.shape)
    out = scaled.to(out_dtype)
    if not bool(torch.isfinite(out).all()):  # only a group left unscaled (one sign) can overflow
        raise ValueError(f"reinforce_max: advantages overflow {out_dtype} "
                         f"(rewards up to {float(rewards.abs().max()):.3g})")
    return out
