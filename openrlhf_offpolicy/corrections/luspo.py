"""LUSPO: length-unbiased sequence policy optimisation (arXiv 2602.05261).

GSPO's per-sequence objective averaged over sequences gives every sequence the same weight
whatever its length, which biases the update towards short responses. LUSPO sums the clipped
sequence-ratio surrogate over the tokens instead of averaging it:
    s_i = exp(mean_t log(pi_theta / pi_old)),
    loss_i = sum_t -min(s_i A_t, clip(s_i, 1 - eps_low, 1 + eps_high) A_t),
averaged over sequences (``sequence_level``: the per-token loss is |y_i| times GSPO's, so
seq-mean-token-mean of it is the paper's sum). The gradient on token u of sequence i is
``-s_i sum_t A_t 1[unclipped_t] / |y_i|``.

TRL 1.16.0's ``luspo`` (with ``importance_sampling_level="sequence"``) is the same: outputs and
gradients equal when every sequence has an action token and |log r_t| <= 20 (TRL divides by the
batch size including empty sequences, we by the sequences with tokens).
"""

from __future__ import annotations

from .batch import PolicyBatch, Surrogate
from .losses import POLICY_LOSSES
from .ppo import clipped_surrogate, gspo_sequence_log_ratio
from .stats import safe_exp


@POLICY_LOSSES.register(
    "luspo",
    sequence_level=True,
    ppo_clip=True,
    source="LUSPO: arXiv 2602.05261",
    preset="configs/luspo.yaml",
    formula="`abs(y_i)` times GSPO's sequence clip of `s_i` (a token sum per sequence)",
    gradient_weight="`s_i` inside the clip",
)
def luspo_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """loss_t = |y_i| * -min(s_i A_t, clip(s_i) A_t): GSPO scaled by the sequence length."""
    ratio = safe_exp(gspo_sequence_log_ratio(batch, batch.old_log_probs)).unsqueeze(-1) * batch.mask
    gspo = clipped_surrogate(ratio, batch.advantages, cfg)
    gspo.loss = gspo.loss * batch.token_counts.unsqueeze(-1)
    return gspo
