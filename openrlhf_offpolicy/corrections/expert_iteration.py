"""Expert iteration: filtered behaviour cloning on the policy's own successful samples
(Anthony et al., arXiv 1705.08439; for LLM reasoning on MATH/GSM8K: Havrilla et al., 'Teaching
Large Language Models to Reason with Reinforcement Learning', arXiv 2403.04642).

Sample, keep what the reward accepts, fine-tune on it: with a 0/1 reward and a non-negative
advantage (e.g. ``--algo.advantage.estimator reinforce``) the kept samples are exactly those with
A > 0, and
    loss_t = -1[A_t > 0] log pi_theta(y_t),
no ratio, no clip, aggregated like every other loss. The gradient is -1[A_t > 0] per token
(the advantage's size is ignored: every accepted sample counts the same).
"""

from __future__ import annotations

from .batch import PolicyBatch, Surrogate
from .losses import POLICY_LOSSES, lazy_token_mean, no_clipping


@POLICY_LOSSES.register(
    "expert_iteration",
    source="Expert iteration: Anthony et al., arXiv 1705.08439; Havrilla et al., arXiv 2403.04642",
    metrics=("expert_iteration/kept_frac",),
    preset="configs/expert_iteration.yaml",
    formula="`-1[A > 0] log pi_theta` (filtered behaviour cloning; pair with a 0/1 reward)",
    gradient_weight="`1[A > 0] / A` (gradient `-1[A > 0]` on `log pi_theta`)",
)
def expert_iteration_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """loss_t = -1[A_t > 0] log pi_theta(y_t)."""
    kept = batch.advantages > 0
    loss = -kept.to(batch.log_probs.dtype) * batch.log_probs
    return Surrogate(
        loss=loss, clipped=no_clipping(batch),
        metrics={"expert_iteration/kept_frac": lazy_token_mean(kept & batch.on, batch)}
    )
