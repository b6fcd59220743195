"""The diagnostics of the README's metric table ("Comparing runs in wandb"): detached 0-d tensors, named for wandb/tensorboard.

Mismatch between pi_roll (sampler) and pi_old (trainer), from the sampled tokens y_t ~ pi_roll
with rho_t = pi_old / pi_roll (Schulman's estimators of KL(pi_roll || pi_old)):
    mismatch/k1      mean_t -log rho_t
    mismatch/k3      mean_t (rho_t - 1 - log rho_t)
    mismatch/max_k2  mean over sequences of max_t 0.5 (log rho_t)^2  (what TRM-Max gates on)
The correction's coefficients c_t over the action tokens:
    is/weight_mean, is/weight_max   mean and max of c_t (rejected tokens count as 0)
    is/ess                          normalised effective sample size (sum c)^2 / (n sum c^2)
    is/token_masked_frac            tokens the gate rejected
    is/seq_masked_frac              sequences with every token rejected
Every tensor read here is already 0 off the mask (``batch.log_rho``, ``Correction.coef`` and
``Correction.rejected``), so plain sums are masked sums.
"""

from __future__ import annotations

from typing import Dict

import torch

from .batch import Correction, PolicyBatch
from .stats import normalized_ess


def mismatch_metrics(batch: PolicyBatch) -> Dict[str, torch.Tensor]:
    log_rho = batch.log_rho
    worst_abs = log_rho.abs().amax(dim=-1) if log_rho.numel() else log_rho.sum(dim=-1)
    return {
        "mismatch/k1": -log_rho.sum() / batch.n_tokens,
        "mismatch/k3": (torch.expm1(log_rho) - log_rho).sum() / batch.n_tokens,
        "mismatch/max_k2": 0.5 * (worst_abs * worst_abs).sum() / batch.n_sequences,
    }


def correction_metrics(correction: Correction, batch: PolicyBatch) -> Dict[str, torch.Tensor]:
    coef = correction.coef
    rejected_per_seq = correction.rejected.sum(dim=-1)
    all_rejected = (rejected_per_seq >= batch.token_counts) & batch.has_tokens
    return {
        "is/weight_mean": coef.sum() / batch.n_tokens,
        "is/weight_max": coef.max() if coef.numel() else coef.sum(),
        "is/ess": normalized_ess(coef, batch.n_tokens),
        "is/token_masked_frac": rejected_per_seq.sum() / batch.n_tokens,
        "is/seq_masked_frac": all_rejected.sum() / batch.n_sequences,
    }


def filter_ratio(correction: Correction, batch: PolicyBatch) -> torch.Tensor:
    """Upstream's ``is_filter_ratio``: out-of-band units, per token or per sequence."""
    if correction.filtered.dim() == 1:
        return (correction.filtered & batch.has_tokens).sum() / batch.n_sequences
    return (correction.filtered & batch.on).sum() / batch.n_tokens
