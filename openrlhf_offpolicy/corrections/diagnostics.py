"""The SPEC §5 diagnostics: detached 0-d tensors, named for wandb/tensorboard.

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
"""

from __future__ import annotations

from typing import Dict

import torch

from .batch import Correction, PolicyBatch
from .stats import masked_mean, normalized_ess, seq_max


def mismatch_metrics(batch: PolicyBatch) -> Dict[str, torch.Tensor]:
    log_rho = batch.log_rho
    has_tokens = (batch.mask.sum(dim=-1) > 0).float()
    return {
        "mismatch/k1": masked_mean(-log_rho, batch.mask),
        "mismatch/k3": masked_mean(torch.expm1(log_rho) - log_rho, batch.mask),
        "mismatch/max_k2": masked_mean(seq_max(0.5 * log_rho * log_rho, batch.mask), has_tokens),
    }


def correction_metrics(correction: Correction, batch: PolicyBatch) -> Dict[str, torch.Tensor]:
    mask = batch.mask
    coef = correction.coef
    token_counts = mask.sum(dim=-1)
    has_tokens = (token_counts > 0).float()
    rejected = correction.rejected.float()
    all_rejected = ((rejected * mask).sum(dim=-1) >= token_counts) & (token_counts > 0)
    weight_max = torch.where(mask > 0, coef, torch.zeros_like(coef)).max() if coef.numel() else coef.sum()
    return {
        "is/weight_mean": masked_mean(coef, mask),
        "is/weight_max": weight_max,
        "is/ess": normalized_ess(coef, mask),
        "is/token_masked_frac": masked_mean(rejected, mask),
        "is/seq_masked_frac": masked_mean(all_rejected.float(), has_tokens),
    }


def filter_ratio(correction: Correction, batch: PolicyBatch) -> torch.Tensor:
    """Upstream's ``is_filter_ratio``: out-of-band units, per token or per sequence."""
    if correction.filtered.dim() == 1:
        return masked_mean(correction.filtered.float(), (batch.mask.sum(dim=-1) > 0).float())
    return masked_mean(correction.filtered.float(), batch.mask)
