"""GMPO: Geometric-Mean Policy Optimization (Zhao et al., arXiv 2507.20673).

GRPO averages token ratios arithmetically, so one token with an extreme ratio dominates. GMPO
optimises the geometric mean of the token ratios of a sequence, clipped token by token in log
space (a pessimistic clip, like PPO's, on the side the advantage pushes):
    l_t  = log pi_theta(y_t) - log pi_old(y_t)
    l'_t = sgn(A) min(sgn(A) l_t, sgn(A) clip(l_t, lo, hi)),   (lo, hi) = gmpo_clip_range
    R_i  = exp(mean_t l'_t),    A_i = mean_t A_t,    loss_i = -A_i R_i,
averaged over sequences (the paper's sequence-level objective: ``sequence_level``). The paper
clips at (-0.4, 0.4), i.e. ratios in (e^-0.4, e^0.4). The gradient on token t is
``-A_i R_i / |y_i|`` where the token's log-ratio is inside the clip (or the clip is on the
harmless side) and 0 elsewhere.

verl 0.9.1's ``geo_mean`` loss is the same objective with (lo, hi) = (-clip_ratio_low,
clip_ratio_high); its outputs and gradients equal ours when every sequence has an action token
and |l_t| <= 20 (we clamp the per-token log-ratio there). It divides by the batch size including
empty sequences, we by the sequences that have tokens (upstream's seq-mean-token-mean), and it
folds a token-level rollout IS weight in as a geometric mean, where we multiply the correction
coefficient c_t into the per-token loss like for every other loss.
"""

from __future__ import annotations

from typing import Optional, Tuple

from ._torch import torch

from .batch import PolicyBatch, Surrogate
from .losses import POLICY_LOSSES
from .registry import Param
from .stats import broadcast_seq, safe_exp, seq_mean


def log_space_range(value: Tuple[float, float]) -> Optional[str]:
    low, high = value
    return None if low < 0.0 < high else "needs low < 0 < high (bounds on log pi_theta - log pi_old)"


def pessimistic_log_ratio_clip(log_ratio: torch.Tensor, advantages: torch.Tensor, low: float, high: float):
    """(l'_t, clipped): the clipped log-ratio where clipping lowers sgn(A) l_t, else l_t."""
    sign = torch.sign(advantages)
    clamped = log_ratio.clamp(min=low, max=high)
    clipped = sign * clamped < sign * log_ratio
    return torch.where(clipped, clamped, log_ratio), clipped


@POLICY_LOSSES.register(
    "gmpo",
    sequence_level=True,
    source="GMPO: Zhao et al., 'Geometric-Mean Policy Optimization', arXiv 2507.20673",
    preset="configs/gmpo.yaml",
    formula="`-A_i exp(mean_t clip(log r))`, pessimistic log-space clip, per sequence",
    gradient_weight="`R_i / abs(y_i)` inside the clip (per sequence)",
    params=(
        Param(
            "gmpo_clip_range",
            (-0.4, 0.4),
            "GMPO log-space clip (lo, hi) of log pi_theta - log pi_old",
            nargs=2,
            check=log_space_range,
        ),
    ),
)
def gmpo_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """loss_i = -mean_t(A_t) exp(mean_t l'_t), spread over the tokens of sequence i."""
    low, high = cfg.params.gmpo_clip_range
    log_ratio, clipped = pessimistic_log_ratio_clip(batch.log_ratio, batch.advantages, low, high)
    seq_ratio = safe_exp(seq_mean(log_ratio, batch.mask))  # bounded already; clamped for every row length
    seq_loss = -seq_mean(batch.advantages, batch.mask) * seq_ratio
    return Surrogate(loss=broadcast_seq(seq_loss, batch.mask), clipped=clipped & batch.on)
