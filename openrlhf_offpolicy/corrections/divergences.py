"""Per-token divergences between the sampling policy mu and another policy pi.

Every function has the signature ``fn(log_mu, log_pi, topk) -> D`` with ``[B, T]`` inputs: the
log-probabilities of the sampled token ``a_t ~ mu`` under mu and under pi, and optionally the
top-K data of ``batch.TopK`` (only the top-K divergences read it). ``D`` is ``[B, T]``.

Sample-based estimators of KL(mu || pi) from a single token a_t ~ mu, with x = pi(a_t)/mu(a_t)
(Schulman, "Approximating KL divergence", 2020; used by TRM, arXiv 2512.23075 §6):
    k1 = -log x                  unbiased, can be negative
    k2 = 0.5 (log x)^2           biased, non-negative; TRM's choice for the max criterion
    k3 = x - 1 - log x           unbiased and non-negative; TRM's choice for the mean criterion
Deterministic lower bounds of the true divergence (DPPO, arXiv 2602.04879 §4 and App. C):
    binary_tv = |mu(a) - pi(a)|
    binary_kl = mu(a) log(mu(a)/pi(a)) + (1-mu(a)) log((1-mu(a))/(1-pi(a)))
i.e. TV and KL after collapsing the vocabulary to {a_t, everything else}. The top-K versions
(TopK(mu) ∪ {a_t} ∪ {other}) live in ``topk.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ._torch import torch

from .registry import Entry, Registry
from .stats import clamp_log_ratio

@dataclass(frozen=True)
class DivergenceEntry(Entry):
    """A registered per-token divergence: whether it is a one-sample estimator, whether it needs the
    rollout's top-K, which methods may read it and DPPO's default threshold for it."""

    sample_based: bool = False
    needs_topk: bool = False
    for_trm: bool = False
    for_dppo: bool = False
    dppo_delta: Optional[float] = None


DIVERGENCES = Registry(
    "divergence",
    entry_type=DivergenceEntry,
    load=(f"{__package__}.divergences", f"{__package__}.topk", f"{__package__}.*"),
)

# Probabilities are clamped away from 0 and 1 before the binary divergences so their logs stay
# finite (the same clamp upstream OpenRLHF 0.11.2 applies in its binary_kl / tv gating).
BINARY_PROB_EPS = 1e-6


@DIVERGENCES.register("k2", sample_based=True, for_trm=True, source="Schulman 2020; TRM arXiv 2512.23075")
def kl_estimator_k2(log_mu: torch.Tensor, log_pi: torch.Tensor, topk=None) -> torch.Tensor:
    log_x = clamp_log_ratio(log_pi - log_mu)
    return 0.5 * log_x * log_x


@DIVERGENCES.register("k3", sample_based=True, for_trm=True, source="Schulman 2020; TRM arXiv 2512.23075")
def kl_estimator_k3(log_mu: torch.Tensor, log_pi: torch.Tensor, topk=None) -> torch.Tensor:
    log_x = clamp_log_ratio(log_pi - log_mu)
    # expm1(l) - l is x - 1 - log x without the cancellation of (1 + small) - 1 near x = 1.
    return torch.expm1(log_x) - log_x


def _binary_log_probs(log_mu: torch.Tensor, log_pi: torch.Tensor):
    low, high = math.log(BINARY_PROB_EPS), math.log1p(-BINARY_PROB_EPS)
    return log_mu.clamp(low, high), log_pi.clamp(low, high)


@DIVERGENCES.register(
    "binary_tv", for_dppo=True, dppo_delta=0.15, source="DPPO arXiv 2602.04879 (binary approximation)"
)
def binary_tv(log_mu: torch.Tensor, log_pi: torch.Tensor, topk=None) -> torch.Tensor:
    lp, lq = _binary_log_probs(log_mu, log_pi)
    return (lp.exp() - lq.exp()).abs()


@DIVERGENCES.register(
    "binary_kl",
    for_dppo=True,
    for_trm=True,
    dppo_delta=0.05,
    source="DPPO arXiv 2602.04879 (binary approximation); TRM arXiv 2512.23075",
)
def binary_kl(log_mu: torch.Tensor, log_pi: torch.Tensor, topk=None) -> torch.Tensor:
    lp, lq = _binary_log_probs(log_mu, log_pi)
    p, q = lp.exp(), lq.exp()
    # A KL is >= 0, but float rounding makes it slightly negative near p = q: clamp before any
    # threshold or metric reads it (OpenRLHF #1354).
    return (p * (lp - lq) + (1 - p) * (torch.log1p(-p) - torch.log1p(-q))).clamp(min=0.0)
