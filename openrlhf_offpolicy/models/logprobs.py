"""Log-probs of the sampled tokens and of the rollout's top-K ids from one pass over the logits.

``log_softmax(logits)[x] = logits[x] - logsumexp(logits)``: the log-normaliser is computed once per
position (over the vocabulary, a chunk of positions at a time so that only a chunk-sized
temporary ever exists) and reused for the label and for the K top-K ids. No second
``[B, T, V]`` tensor is materialised. Same arithmetic as upstream OpenRLHF's float32 path
(``log_probs_from_logits``), so the label log-probs are identical to upstream's.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

CHUNK_POSITIONS = 1024  # upstream's chunk size for its log-normaliser


def logsumexp_by_chunk(flat_logits: torch.Tensor, chunk: int = CHUNK_POSITIONS) -> torch.Tensor:
    """logsumexp over the last dim of ``[N, V]`` logits, ``chunk`` rows at a time."""
    out = torch.empty(flat_logits.shape[0], dtype=flat_logits.dtype, device=flat_logits.device)
    for start in range(0, flat_logits.shape[0], chunk):
        out[start:start + chunk] = torch.logsumexp(flat_logits[start:start + chunk], dim=-1)
    return out


def log_probs_with_topk(
    logits: torch.Tensor, labels: torch.Tensor, topk_ids: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(log pi(labels) ``[...]``, log pi(topk_ids) ``[..., K]`` or None) for ``[..., V]`` logits.

    ``topk_ids`` entries < 0 (empty slots) are gathered at id 0 and must be masked by the caller.
    """
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    lse = logsumexp_by_chunk(flat)
    label_lp = (flat.gather(-1, labels.reshape(-1, 1)).squeeze(-1) - lse).view(labels.shape)
    if topk_ids is None:
        return label_lp, None
    k = topk_ids.shape[-1]
    ids = topk_ids.reshape(-1, k).clamp(min=0).long()
    topk_lp = (flat.gather(-1, ids) - lse.unsqueeze(-1)).view(*labels.shape, k)
    return label_lp, topk_lp
