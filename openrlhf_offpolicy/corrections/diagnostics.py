"""The diagnostics every run logs, as statistics exact over a training step (``metrics``).

Mismatch between pi_roll (sampler) and pi_old (trainer), from the sampled tokens y_t ~ pi_roll
with rho_t = pi_old / pi_roll (Schulman's estimators of KL(pi_roll || pi_old)), over the action
tokens with a finite pi_roll:
    mismatch/k1      token mean of -log rho_t
    mismatch/k3      token mean of (rho_t - 1 - log rho_t)
    mismatch/max_k2  sequence mean of max_t 0.5 (log rho_t)^2  (what TRM-Max gates on)
The correction's coefficients c_t over the action tokens:
    is/weight_mean         token mean of c_t (rejected tokens count as 0)
    is/weight_max          max of c_t over the step
    is/ess                 normalised effective sample size (sum c)^2 / (n sum c^2) of the step
    is/token_masked_frac   token mean of "the gate rejected the token"
    is/seq_masked_frac     sequence mean of "every token of the sequence rejected"
Every tensor read here is already 0 off the mask (``batch.log_rho``, ``Correction.coef`` and
``Correction.rejected``), so plain sums are masked sums.
"""

from __future__ import annotations

from typing import Dict

from .batch import Correction, PolicyBatch
from .metrics import Statistic, effective_sample_size, maximum, sequence_mean, token_mean


def mismatch_metrics(batch: PolicyBatch) -> Dict[str, Statistic]:
    log_rho = batch.log_rho
    mask = batch.rollout_on
    worst_abs = log_rho.abs().amax(dim=-1) if log_rho.numel() else log_rho.sum(dim=-1)
    return {
        "mismatch/k1": token_mean(-log_rho, mask),
        "mismatch/k3": token_mean(log_rho.expm1() - log_rho, mask),
        "mismatch/max_k2": sequence_mean(0.5 * worst_abs * worst_abs, mask.sum(dim=-1) > 0),
    }


def correction_metrics(correction: Correction, batch: PolicyBatch) -> Dict[str, Statistic]:
    coef = correction.coef
    rejected_per_seq = correction.rejected.sum(dim=-1)
    all_rejected = (rejected_per_seq >= batch.token_counts) & batch.has_tokens
    return {
        "is/weight_mean": token_mean(coef, batch.mask),
        "is/weight_max": maximum(coef, batch.on),
        "is/ess": effective_sample_size(coef, batch.mask),
        "is/token_masked_frac": token_mean(correction.rejected, batch.mask),
        "is/seq_masked_frac": sequence_mean(all_rejected, batch.has_tokens),
    }


def filter_ratio(correction: Correction, batch: PolicyBatch) -> Statistic:
    """Upstream's ``is_filter_ratio``: out-of-band units, per token or per sequence.

    A sequence without action tokens is not a unit (upstream 0.11.2 counts it as filtered: its
    per-sequence statistic is 0/0 = NaN, which fails the band test).
    """
    if correction.filtered.dim() == 1:
        return sequence_mean(correction.filtered & batch.has_tokens, batch.has_tokens)
    return token_mean(correction.filtered & batch.on, batch.mask)
