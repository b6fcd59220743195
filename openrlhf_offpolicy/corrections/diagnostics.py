"""The loss diagnostics: detached tensors (0-d token means or [B] per-sequence values), named for wandb.

Mismatch between pi_roll (sampler) and pi_old (trainer), from the sampled tokens y_t ~ pi_roll
with rho_t = pi_old / pi_roll (Schulman's estimators of KL(pi_roll || pi_old)):
    mismatch/k1      mean_t -log rho_t
    mismatch/k3      mean_t (rho_t - 1 - log rho_t)
    mismatch/max_k2  mean over sequences of max_t 0.5 (log rho_t)^2  (what TRM-Max gates on)
    mismatch/chi2_token     mean_t (rho_t^2 - 1)  (chi^2(pi_old || pi_roll) estimated from y_t ~ pi_roll)
    mismatch/chi2_seq       [B]: rho(y)^2 - 1 per sequence, rho(y) = exp(clamp(sum_t log rho_t, +-20))
    mismatch/ppl_ratio      [B]: PPL_old(y) / PPL_roll(y) = exp(-mean_t log rho_t) per sequence
    mismatch/prob_abs_diff  mean_t |pi_old(y_t) - pi_roll(y_t)|
    mismatch/k3_q1..k3_q4   token mean of k3 over the sequences of each response-length quartile of
                            the call (q1 shortest), 0 for an empty quartile
``[B]`` metrics are per-sequence vectors (upstream averages them over the step's sequences); the
others are 0-d token means (upstream weights them by the micro-batch's token count).
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

from .batch import Correction, PolicyBatch, Surrogate
from .stats import clamp_log_ratio, normalized_ess


def masked_total(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(x * mask) in one read-only pass (no [B, T] temporary)."""
    return torch.dot(x.reshape(-1), mask.reshape(-1)) if x.numel() else x.sum()


def length_quartiles(token_counts: torch.Tensor) -> torch.Tensor:
    """Quartile 0..3 of each sequence's response length within the call (ties by position); -1: no tokens."""
    valid = token_counts > 0
    n_valid = valid.sum()
    # Sequences without tokens sort first (key -1), so valid ranks start at B - n_valid.
    order = torch.argsort(torch.where(valid, token_counts, -torch.ones_like(token_counts)), stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    rank = rank - (order.numel() - n_valid)
    quartile = torch.div(4 * rank, n_valid.clamp(min=1), rounding_mode="floor")
    return torch.where(valid, quartile, -torch.ones_like(quartile))


def mismatch_metrics(batch: PolicyBatch) -> Dict[str, torch.Tensor]:
    """Every statistic is built from a few passes over log rho_t: expm1(log rho) gives rho - 1
    (k3 and chi^2 without cancellation), row sums give the per-sequence statistics."""
    log_rho, mask, n = batch.log_rho, batch.mask, batch.n_tokens  # log_rho is 0 off the mask
    rho_minus_1 = torch.expm1(log_rho)  # 0 off the mask
    seq_log_rho = log_rho.sum(dim=-1)
    seq_k3 = rho_minus_1.sum(dim=-1) - seq_log_rho  # sum_t (rho_t - 1 - log rho_t)
    if log_rho.shape[-1]:
        lowest, highest = torch.aminmax(log_rho, dim=-1)
        worst_abs = torch.maximum(highest, -lowest)
    else:
        worst_abs = seq_log_rho
    sum_sq = (rho_minus_1.reshape(-1) @ rho_minus_1.reshape(-1)) if log_rho.numel() else seq_log_rho.sum()
    counts = batch.token_counts
    # A log-prob above 0 is invalid input; clamping keeps the probability difference finite.
    old_p, roll_p = batch.old_log_probs.clamp(max=0.0).exp_(), batch.rollout_log_probs.clamp(max=0.0).exp_()
    quartile = length_quartiles(counts)
    metrics = {
        "mismatch/k1": -seq_log_rho.sum() / n,
        "mismatch/k3": seq_k3.sum() / n,
        "mismatch/max_k2": 0.5 * (worst_abs * worst_abs).sum() / batch.n_sequences,
        # rho^2 - 1 = (rho - 1)^2 + 2 (rho - 1)
        "mismatch/chi2_token": (sum_sq + 2 * rho_minus_1.sum()) / n,
        "mismatch/chi2_seq": torch.expm1(2 * clamp_log_ratio(seq_log_rho)),
        "mismatch/ppl_ratio": torch.exp(-seq_log_rho / counts.clamp(min=1.0)),
        "mismatch/prob_abs_diff": masked_total(old_p.sub_(roll_p).abs_(), mask) / n,
    }
    for q in range(4):
        members = (quartile == q).to(log_rho.dtype)
        metrics[f"mismatch/k3_q{q + 1}"] = (seq_k3 * members).sum() / (counts * members).sum().clamp(min=1.0)
    return metrics


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


def clip_fraction(surrogate: Surrogate, batch: PolicyBatch) -> torch.Tensor:
    """Upstream's ``clip_ratio``: the fraction of action tokens the surrogate clipped (None: none)."""
    if surrogate.clipped is None:
        return torch.zeros((), dtype=batch.mask.dtype, device=batch.mask.device)
    return (surrogate.clipped & batch.on).sum() / batch.n_tokens


def filter_ratio(correction: Correction, batch: PolicyBatch) -> torch.Tensor:
    """Upstream's ``is_filter_ratio``: out-of-band units, per token or per sequence."""
    if correction.filtered.dim() == 1:
        return (correction.filtered & batch.has_tokens).sum() / batch.n_sequences
    return (correction.filtered & batch.on).sum() / batch.n_tokens
