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
    mismatch/js             token mean of the Jensen-Shannon divergence between pi_old and pi_roll over
                            the binary event {y_t, any other token}
    mismatch/prob_diff_gt_ln2_frac
                            token fraction with |log rho_t| > ln 2 (one probability at least twice the other)
    mismatch/k3_len<=512, k3_len<=2048, k3_len<=8192, k3_len>8192
                            token mean of k3 over the sequences whose response length (action tokens)
                            falls in that fixed bucket of the generation budget
    mismatch/k3_turn1, k3_turn2, k3_turn3+
                            token mean of k3 over the tokens of each row's first, second and later
                            turns (segments: maximal runs of action tokens)
Every bucket is fixed in advance (not ranked within a micro-batch), so every metric is exact over the
training step.
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

import math
from typing import Dict, Optional, Tuple

from ._torch import torch

from .batch import Correction, PolicyBatch, Surrogate
from .metrics import EffectiveSampleSize, Mean, Statistic, masked_total, maximum, sequence_mean
from .divergences import BINARY_PROB_EPS
from .stats import clamp_log_ratio


LENGTH_BUCKETS = (512, 2048, 8192)  # upper edges (action tokens); the last bucket is open
TURN_BUCKETS = (1, 2)  # turn1, turn2, then turn3+
LN2 = math.log(2.0)


def length_bucket_names() -> Tuple[str, ...]:
    return tuple(f"mismatch/k3_len<={edge}" for edge in LENGTH_BUCKETS) + (f"mismatch/k3_len>{LENGTH_BUCKETS[-1]}",)


def turn_bucket_names() -> Tuple[str, ...]:
    return tuple(f"mismatch/k3_turn{t}" for t in TURN_BUCKETS) + (f"mismatch/k3_turn{TURN_BUCKETS[-1] + 1}+",)


def length_bucket(token_counts: torch.Tensor) -> torch.Tensor:
    """Bucket 0..len(LENGTH_BUCKETS) of each sequence's response length (fixed edges)."""
    edges = torch.tensor(LENGTH_BUCKETS, dtype=token_counts.dtype, device=token_counts.device)
    return torch.bucketize(token_counts, edges, right=False)


def binary_js(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence of Bernoulli(p) and Bernoulli(q), in [0, ln 2] (overwrites p and q).

    p and q are clamped to [1e-6, 1 - 1e-6] (as the binary KL / TV are). With m = (p + q)/2 and
    d = (p - q)/2, each log-ratio is a ``log1p`` of ``+-d/m`` or ``+-d/(1 - m)``, both in (-1, 1): no
    log is infinite and nothing cancels when p is close to q (JS ~ d^2 / (2 m (1 - m))).
    """
    # In place where possible: a diagnostic over every action token, read after every micro-batch.
    p = p.clamp_(BINARY_PROB_EPS, 1 - BINARY_PROB_EPS)
    q = q.clamp_(BINARY_PROB_EPS, 1 - BINARY_PROB_EPS)
    d = torch.sub(p, q).mul_(0.5)
    m = torch.add(p, q).mul_(0.5)
    a = torch.div(d, m)
    js = torch.log1p(a).mul_(p)  # p log(p/m)
    js.add_(torch.log1p(a.neg_()).mul_(q))  # q log(q/m)
    c = d.div_(m.neg_().add_(1))  # d / (1 - m)
    js.add_(torch.log1p(c).mul_(q.neg_().add_(1)))  # (1 - q) log((1 - q)/(1 - m))
    js.add_(torch.log1p(c.neg_()).mul_(p.neg_().add_(1)))  # (1 - p) log((1 - p)/(1 - m))
    return js.mul_(0.5).clamp_(min=0.0)


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
    prob_abs_diff = masked_total(torch.sub(old_p, roll_p).abs_(), mask)
    js = masked_total(binary_js(old_p, roll_p), mask)  # overwrites old_p and roll_p
    stats = {
        "mismatch/k1": Mean(total=-_f64(seq_log_rho.sum()), count=n),
        "mismatch/k3": Mean(total=_f64(seq_k3.sum()), count=n),
        "mismatch/max_k2": sequence_mean(0.5 * worst_abs * worst_abs, has_tokens),
        # rho^2 - 1 = (rho - 1)^2 + 2 (rho - 1)
        "mismatch/chi2_token": Mean(total=_f64(sum_sq + 2 * rho_minus_1.sum()), count=n),
        "mismatch/chi2_seq": sequence_mean(torch.expm1(2 * clamp_log_ratio(seq_log_rho)), has_tokens),
        "mismatch/ppl_ratio": sequence_mean(torch.exp(-seq_log_rho / counts.clamp(min=1.0)), has_tokens),
        "mismatch/prob_abs_diff": Mean(total=_f64(prob_abs_diff), count=n),
        "mismatch/js": Mean(total=_f64(js), count=n),
        # log_rho is 0 off the mask, and 0 is within ln 2: a plain count is the masked count
        "mismatch/prob_diff_gt_ln2_frac": Mean(total=_f64(torch.count_nonzero(log_rho.abs() > LN2)), count=n),
    }
    bucket = length_bucket(counts)
    for i, name in enumerate(length_bucket_names()):
        members = (bucket == i).to(log_rho.dtype)
        stats[name] = Mean(total=_f64((seq_k3 * members).sum()), count=_f64((counts * members).sum()))
    stats.update(turn_statistics(batch, rho_minus_1, seq_k3, n))
    return stats


def turn_statistics(batch: PolicyBatch, rho_minus_1: torch.Tensor, seq_k3: torch.Tensor, n) -> Dict[str, Statistic]:
    """k3 by turn: turn 1, turn 2, turns 3+ (single-turn rows: everything is turn 1, nothing else)."""
    names = turn_bucket_names()
    zero = torch.zeros((), dtype=torch.float64)
    total = _f64(seq_k3.sum())
    if batch.single_turn:
        return {names[0]: Mean(total=total, count=n), **{name: Mean(total=zero, count=zero) for name in names[1:]}}
    k3 = rho_minus_1 - batch.log_rho  # 0 off the mask
    mask, turns = batch.rollout_on, batch.turns
    out, rest_total, rest_count = {}, total, n
    for i, name in enumerate(names[:-1]):
        members = (turns == i + 1).to(mask.dtype) * mask
        part_total, part_count = _f64(masked_total(k3, members)), _f64(members.sum())
        out[name] = Mean(total=part_total, count=part_count)
        rest_total, rest_count = rest_total - part_total, rest_count - part_count
    out[names[-1]] = Mean(total=rest_total, count=rest_count)
    return out


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
