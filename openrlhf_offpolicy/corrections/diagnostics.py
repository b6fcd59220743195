"""The diagnostics every run logs, as statistics exact over a training step (``metrics``).

Mismatch between pi_roll (sampler) and pi_old (trainer), from the sampled tokens y_t ~ pi_roll
with rho_t = pi_old / pi_roll (Schulman's estimators of KL(pi_roll || pi_old)), over the action
tokens with a finite pi_roll:
    mismatch/k1             token mean of -log rho_t
    mismatch/k3             token mean of (rho_t - 1 - log rho_t)
    mismatch/max_k2         sequence mean of max_t 0.5 (log rho_t)^2  (what TRM-Max gates on)
    mismatch/chi2_token     token mean of (rho_t^2 - 1)  (chi^2(pi_old || pi_roll) estimated from y_t ~ pi_roll)
    mismatch/chi2_seq       sequence mean of rho(y)^2 - 1, rho(y) = exp(clamp(sum_t log rho_t, +-20))
    mismatch/ppl_ratio      sequence mean of PPL_old(y) / PPL_roll(y) = exp(-mean_t log rho_t)
    mismatch/prob_abs_diff  token mean of |pi_old(y_t) - pi_roll(y_t)|
    mismatch/k3_q1..k3_q4   token mean of k3 over the sequences of each response-length quartile
                            (q1 shortest); the quartiles are ranked within each loss call
                            (micro-batch), so the step value is exact for that per-call ranking
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

from typing import Dict, Optional

from ._torch import torch

from .batch import Correction, PolicyBatch, Surrogate
from .metrics import EffectiveSampleSize, Mean, Statistic, masked_total, maximum, sequence_mean
from .stats import clamp_log_ratio


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


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float64)


def mismatch_metrics(batch: PolicyBatch) -> Dict[str, Statistic]:
    """Every statistic is built from a few passes over log rho_t: expm1(log rho) gives rho - 1
    (k3 and chi^2 without cancellation), row sums give the per-sequence statistics."""
    log_rho, mask = batch.log_rho, batch.rollout_on  # log_rho is 0 off the mask
    rho_minus_1 = torch.expm1(log_rho)  # 0 off the mask
    seq_log_rho = log_rho.sum(dim=-1)
    seq_k3 = rho_minus_1.sum(dim=-1) - seq_log_rho  # sum_t (rho_t - 1 - log rho_t)
    if log_rho.shape[-1]:
        lowest, highest = torch.aminmax(log_rho, dim=-1)
        worst_abs = torch.maximum(highest, -lowest)
    else:
        worst_abs = seq_log_rho
    sum_sq = (rho_minus_1.reshape(-1) @ rho_minus_1.reshape(-1)) if log_rho.numel() else seq_log_rho.sum()
    counts = batch.token_counts if batch.rollout_mask is None else mask.sum(dim=-1)
    has_tokens = counts > 0
    n = _f64(counts.sum())
    # A log-prob above 0 is invalid input; clamping keeps the probability difference finite.
    old_p = batch.old_log_probs.clamp(max=0.0).exp_()
    roll_p = batch.rollout_log_probs.clamp(max=0.0).exp_()
    quartile = length_quartiles(counts)
    stats = {
        "mismatch/k1": Mean(total=-_f64(seq_log_rho.sum()), count=n),
        "mismatch/k3": Mean(total=_f64(seq_k3.sum()), count=n),
        "mismatch/max_k2": sequence_mean(0.5 * worst_abs * worst_abs, has_tokens),
        # rho^2 - 1 = (rho - 1)^2 + 2 (rho - 1)
        "mismatch/chi2_token": Mean(total=_f64(sum_sq + 2 * rho_minus_1.sum()), count=n),
        "mismatch/chi2_seq": sequence_mean(torch.expm1(2 * clamp_log_ratio(seq_log_rho)), has_tokens),
        "mismatch/ppl_ratio": sequence_mean(torch.exp(-seq_log_rho / counts.clamp(min=1.0)), has_tokens),
        "mismatch/prob_abs_diff": Mean(total=_f64(masked_total(old_p.sub_(roll_p).abs_(), mask)), count=n),
    }
    for q in range(4):
        members = (quartile == q).to(log_rho.dtype)
        stats[f"mismatch/k3_q{q + 1}"] = Mean(total=_f64((seq_k3 * members).sum()),
                                              count=_f64((counts * members).sum()))
    return stats


def correction_metrics(correction: Correction, batch: PolicyBatch) -> Dict[str, Statistic]:
    """``coef`` is 0 off the mask, so its plain sums are the masked sums (no mask product, no recount)."""
    coef = correction.coef.detach()
    rejected_per_seq = correction.rejected.sum(dim=-1)
    all_rejected = (rejected_per_seq >= batch.token_counts) & batch.has_tokens
    flat = coef.reshape(-1)
    sum_w = flat.sum()
    return {
        "is/weight_mean": Mean(total=sum_w, count=batch.token_total),
        "is/weight_max": maximum(coef, batch.on),
        "is/ess": EffectiveSampleSize(sum_w=sum_w, sum_w2=torch.dot(flat, flat) if flat.numel() else sum_w,
                                      count=batch.token_total),
        "is/token_masked_frac": Mean(total=_f64(rejected_per_seq.sum()), count=_f64(batch.token_total)),
        "is/seq_masked_frac": sequence_mean(all_rejected, batch.has_tokens),
    }


def clipped_count(clipped: Optional[torch.Tensor], batch: PolicyBatch) -> Optional[torch.Tensor]:
    """Action tokens the surrogate clipped (``clipped`` is ``Surrogate.clipped``; None: it never clips)."""
    return None if clipped is None else (clipped & batch.on).sum()


def clip_fraction(surrogate: Surrogate, batch: PolicyBatch, count: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Upstream's ``clip_ratio``: the fraction of action tokens the surrogate clipped (None: none)."""
    if surrogate.clipped is None:
        return torch.zeros((), dtype=batch.mask.dtype, device=batch.mask.device)
    return (clipped_count(surrogate.clipped, batch) if count is None else count) / batch.n_tokens


def clip_statistic(clipped: Optional[torch.Tensor], batch: PolicyBatch,
                   count: Optional[torch.Tensor] = None) -> Statistic:
    """``ppo_clip_ratio`` as a step statistic; ``count`` is ``clipped_count`` when already made."""
    if clipped is None:
        return Mean(total=torch.zeros((), dtype=torch.float64), count=_f64(batch.token_total))
    return Mean(total=clipped_count(clipped, batch) if count is None else count, count=batch.token_total)


def filter_ratio(correction: Correction, batch: PolicyBatch) -> Statistic:
    """Upstream's ``is_filter_ratio``: out-of-band units, per token or per sequence.

    A sequence without action tokens is not a unit (upstream 0.11.2 counts it as filtered: its
    per-sequence statistic is 0/0 = NaN, which fails the band test).
    """
    if correction.filtered.dim() == 1:
        return sequence_mean(correction.filtered & batch.has_tokens, batch.has_tokens)
    return Mean(total=(correction.filtered & batch.on).sum(), count=batch.token_total)
