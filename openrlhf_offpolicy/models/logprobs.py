"""Log-probs of the sampled tokens and of the rollout's top-K ids from one pass over the logits.

``log_softmax(logits)[x] = logits[x] - logsumexp(logits)``: the log-normaliser is computed once per
position (over the vocabulary, a chunk of positions at a time so that only a chunk-sized
temporary ever exists) and reused for the label and for the K top-K ids. No second
``[B, T, V]`` tensor is materialised. Same arithmetic as upstream OpenRLHF's float32 path without
flash-attn (``log_probs_from_logits``), so the label log-probs are identical to that path's.

With a ``Truncation`` (``--match_rollout_sampling``) each position's distribution is first
restricted to the tokens the rollout's sampler could draw and renormalised over them, in vLLM's
order (after temperature: min-p, then top-k, then top-p):
    min-p:  keep x iff p(x) >= min_p * max_y p(y)
    top-k:  keep x iff its logit is >= the k-th largest logit (ties kept)
    top-p:  keep x iff the mass of the tokens strictly more likely than x (in sorted order) is < top_p
so pi_trunc(x) = p(x) 1[x kept] / sum_{y kept} p(y). The trainer then optimises this truncated
policy, the one the rollout actually sampled from (slime and NeMo-RL do the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

CHUNK_POSITIONS = 1024  # upstream's chunk size for its log-normaliser


@dataclass(frozen=True)
class Truncation:
    """The rollout's sampling truncation (vLLM semantics; -1 / 1.0 / 0.0 switch each part off)."""

    top_k: int = -1
    top_p: float = 1.0
    min_p: float = 0.0

    @property
    def active(self) -> bool:
        return self.top_k > 0 or self.top_p < 1.0 or self.min_p > 0.0


def truncate_logits(logits: torch.Tensor, truncation: Truncation) -> torch.Tensor:
    """A copy of ``[N, V]`` logits with -inf at every token the truncation removes."""
    out = logits.clone()
    neg_inf = torch.tensor(float("-inf"), dtype=out.dtype, device=out.device)
    if truncation.min_p > 0.0:
        probs = torch.softmax(out, dim=-1)
        out = torch.where(probs < probs.amax(dim=-1, keepdim=True) * truncation.min_p, neg_inf, out)
    if 0 < truncation.top_k < out.shape[-1]:
        kth = out.topk(truncation.top_k, dim=-1).values[..., -1:]
        out = torch.where(out < kth, neg_inf, out)
    if truncation.top_p < 1.0:
        ordered, order = out.sort(dim=-1, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        ordered = torch.where(mass_before < truncation.top_p, ordered, neg_inf)
        ordered[..., 0] = out.gather(-1, order[..., :1]).squeeze(-1)  # the most likely token always stays
        out = torch.empty_like(out).scatter_(-1, order, ordered)
    return out


def logsumexp_by_chunk(flat_logits: torch.Tensor, chunk: int = CHUNK_POSITIONS) -> torch.Tensor:
    """logsumexp over the last dim of ``[N, V]`` logits, ``chunk`` rows at a time."""
    out = torch.empty(flat_logits.shape[0], dtype=flat_logits.dtype, device=flat_logits.device)
    for start in range(0, flat_logits.shape[0], chunk):
        out[start:start + chunk] = torch.logsumexp(flat_logits[start:start + chunk], dim=-1)
    return out


def log_probs_with_topk(
    logits: torch.Tensor,
    labels: torch.Tensor,
    topk_ids: Optional[torch.Tensor] = None,
    truncation: Optional[Truncation] = None,
    chunk: int = CHUNK_POSITIONS,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(log pi(labels) ``[...]``, log pi(topk_ids) ``[..., K]`` or None) for ``[..., V]`` logits.

    ``topk_ids`` entries < 0 (empty slots) are gathered at id 0 and must be masked by the caller.
    With ``truncation``, pi is the truncated, renormalised distribution (-inf outside it).
    """
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    flat_labels = labels.reshape(-1, 1)
    ids = None if topk_ids is None else topk_ids.reshape(flat.shape[0], -1).clamp(min=0).long()
    if ids is not None and ids.numel() and int(ids.max()) >= vocab:  # a gather would fail (or assert on CUDA)
        raise ValueError(f"top-K token id {int(ids.max())} is outside the vocabulary of {vocab} logits")
    if truncation is None or not truncation.active:
        lse = logsumexp_by_chunk(flat, chunk)
        label_lp = (flat.gather(-1, flat_labels).squeeze(-1) - lse).view(labels.shape)
        if ids is None:
            return label_lp, None
        return label_lp, (flat.gather(-1, ids) - lse.unsqueeze(-1)).view(*labels.shape, ids.shape[-1])
    label_parts, topk_parts = [], []
    for start in range(0, flat.shape[0], chunk):
        rows = truncate_logits(flat[start:start + chunk], truncation)
        lse = torch.logsumexp(rows, dim=-1)
        label_parts.append(rows.gather(-1, flat_labels[start:start + chunk]).squeeze(-1) - lse)
        if ids is not None:
            topk_parts.append(rows.gather(-1, ids[start:start + chunk]) - lse.unsqueeze(-1))
    label_lp = torch.cat(label_parts).view(labels.shape)
    if ids is None:
        return label_lp, None
    return label_lp, torch.cat(topk_parts).view(*labels.shape, ids.shape[-1])
