"""Top-K divergences between the rollout policy mu and pi over a collapsed vocabulary
(DPPO, arXiv 2602.04879, App. C; TRM, arXiv 2512.23075; docs/design.md, "Top-K divergences").

The rollout returns the top-K log-probs of mu at every generated token (vLLM allows K <= 20). With
S_t = TopK(mu(.|c_t)) ∪ {a_t} (the sampled token a_t counted once) and one "other" bucket holding the
rest of the mass, both policies become distributions over K + 2 outcomes at most:
    p(s) = policy(s | c_t) for s in S_t,   p(other) = max(1 - sum_{s in S_t} p(s), 1e-12)
and
    topk_tv = 1/2 sum_{x in S_t ∪ {other}} |mu(x) - pi(x)|
    topk_kl = sum_{x in S_t ∪ {other}} mu(x) log(mu(x) / pi(x)).
Merging outcomes can only lose information, so binary <= top-K <= full-vocabulary divergence
(DPPO, arXiv 2602.04879, App. C), with equality when S_t covers the support. DPPO thresholds:
top-K TV 0.2, top-K KL 0.05.

The divergences read ``batch.TopK``: ``rollout_log_probs`` (log mu at the ids), ``log_probs``
(log pi at the ids, detached), ``valid`` (slots that hold an id) and ``sampled_in_topk``.
"""

from __future__ import annotations

from ._torch import torch

from .batch import TopK
from .divergences import DIVERGENCES

OTHER_MASS_FLOOR = 1e-12
# Log-probs below this are treated as probability 0 (vLLM reports -inf for filtered tokens).
LOG_PROB_FLOOR = -1e4


def _require(topk) -> TopK:
    if topk is None:
        raise ValueError("a top-K divergence needs the rollout's top-K log-probs (--vllm_logprobs_topk K), "
                         "but none were given")
    return topk


def collapsed_log_probs(sampled_log_prob: torch.Tensor, topk_log_probs: torch.Tensor, topk: TopK):
    """Log-probs of one policy over S_t ∪ {other}: returns (slots ``[..., K + 1]``, other ``[...]``).

    Slot K is the sampled token when it is not among the top-K ids (else it is empty: -inf-like).
    Empty and padding slots carry ``LOG_PROB_FLOOR`` (probability 0).
    """
    floor = torch.full_like(topk_log_probs, LOG_PROB_FLOOR)
    slots = torch.where(topk.valid, topk_log_probs.clamp(min=LOG_PROB_FLOOR), floor)
    extra = torch.where(topk.sampled_in_topk, torch.full_like(sampled_log_prob, LOG_PROB_FLOOR),
                        sampled_log_prob.clamp(min=LOG_PROB_FLOOR))
    slots = torch.cat([slots, extra.unsqueeze(-1)], dim=-1)
    mass = slots.exp().sum(dim=-1)
    other = torch.log((1.0 - mass).clamp(min=OTHER_MASS_FLOOR))
    return slots, other


@DIVERGENCES.register("topk_tv", needs_topk=True, for_dppo=True, dppo_delta=0.2,
                      source="DPPO arXiv 2602.04879 (top-K approximation)")
def topk_tv(log_mu: torch.Tensor, log_pi: torch.Tensor, topk=None) -> torch.Tensor:
    topk = _require(topk)
    mu_slots, mu_other = collapsed_log_probs(log_mu, topk.rollout_log_probs, topk)
    pi_slots, pi_other = collapsed_log_probs(log_pi, topk.log_probs, topk)
    slots = (mu_slots.exp() - pi_slots.exp()).abs().sum(dim=-1)
    return 0.5 * (slots + (mu_other.exp() - pi_other.exp()).abs())


@DIVERGENCES.register("topk_kl", needs_topk=True, for_dppo=True, for_trm=True, dppo_delta=0.05,
                      source="DPPO arXiv 2602.04879 (top-K approximation); TRM arXiv 2512.23075")
def topk_kl(log_mu: torch.Tensor, log_pi: torch.Tensor, topk=None) -> torch.Tensor:
    topk = _require(topk)
    mu_slots, mu_other = collapsed_log_probs(log_mu, topk.rollout_log_probs, topk)
    pi_slots, pi_other = collapsed_log_probs(log_pi, topk.log_probs, topk)
    # p log(p / q) with p = 0 contributes 0: the floor makes exp(mu) exactly 0 there, never 0 * inf.
    slots = (mu_slots.exp() * (mu_slots - pi_slots)).sum(dim=-1)
    return slots + mu_other.exp() * (mu_other - pi_other)
