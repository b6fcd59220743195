"""``--is_batch_normalize``: rescale the correction's importance weights to mean 1.

Self-normalised importance sampling (the ratio estimator; Owen, "Monte Carlo theory, methods
and examples", 2013, §9.2; verl's ``rollout_is_batch_normalize``):

    token-level weights     c_t <- c_t / mean_{kept tokens} c
    sequence-level weights  c_t <- c_t / mean_{kept sequences} w(y),  w(y) the sequence's weight

"Kept" excludes the tokens the correction's gate or a rejection criterion removed (their weight
stays 0). The mean is taken over the tokens/sequences of the current loss call (one
micro-batch), whether or not upstream passes its global normalisers: the global-batch mean
would need the sum of the weights over the whole training step, which upstream 0.11.2 does not
pass to the loss. The weights stay detached, so the gradient is the self-normalised estimator's.
"""

from __future__ import annotations

from dataclasses import replace

from ._torch import torch

from .batch import Correction, PolicyBatch


def batch_normalize(correction: Correction, batch: PolicyBatch, enabled: bool) -> Correction:
    """Divide the coefficient by its mean over the call's kept units (unchanged when not enabled)."""
    if not enabled:
        return correction
    coef = correction.coef
    kept = (batch.on & ~correction.rejected).to(coef.dtype)
    if correction.weight_level == "sequence":
        kept_tokens = kept.sum(dim=-1)
        seq_weight = (coef * kept).sum(dim=-1) / kept_tokens.clamp(min=1.0)
        kept_seq = (kept_tokens > 0).to(coef.dtype)
        mean = (seq_weight * kept_seq).sum() / kept_seq.sum().clamp(min=1.0)
    else:
        mean = (coef * kept).sum() / kept.sum().clamp(min=1.0)
    # Nothing kept (or every weight 0): the coefficients are all 0 already; leave them.
    scale = torch.where(mean > 0, 1.0 / mean.clamp(min=torch.finfo(coef.dtype).tiny), torch.ones_like(mean))
    return replace(correction, coef=coef * scale)
