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
    top-p:  sort ascending; drop x iff the cumulative mass up to and including x is <= 1 - top_p
            (= keep x iff the mass of the tokens sorted above x is < top_p); the largest stays
so pi_trunc(x) = p(x) 1[x kept] / sum_{y kept} p(y). The trainer then optimises this truncated
policy, the one the rollout actually sampled from (slime and NeMo-RL do the same).

The kept set is computed with vLLM 0.29's own sequence of torch operations
(``MinPLogitsProcessor.apply``, ``apply_top_k_top_p_pytorch``: the same sort, softmax, cumsum and
float32 comparisons), so on identical logits it is identical token for token, ties included
(tests/integration/runtime/test_sampling.py checks it against vLLM's function). vLLM is not imported here.
Residual: on a GPU, vLLM 0.29 sends batches of 8 or more rows to a Triton kernel
(``apply_top_k_top_p_triton``) that trims ties to exactly k and finds the top-p cut by an
approximate search; its kept set can differ from the PyTorch path's at the boundary (tokens
whose cumulative mass is within float error of 1 - top_p, or tied with the k-th logit). A token
the rollout sampled but the trainer's truncation excludes gets log-prob -inf here; the loss
masks it and counts it (``sampling/excluded_token_frac``).

Memory: the truncated path is one autograd node (``TruncatedLogProbs``) that keeps the logits
(as the untruncated path does), the kept set as a bit mask (V/8 bytes per position) and the
log-normaliser; the sort and its int64 indices are temporaries of the forward, chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

CHUNK_POSITIONS = 1024  # upstream's chunk size for its log-normaliser
# The truncated path sorts each chunk (values + int64 indices: 3x the chunk's float32 size as
# temporaries), so it works on smaller chunks: its transient memory stays small next to the logits.
TRUNCATION_CHUNK_POSITIONS = 128


@dataclass(frozen=True)
class Truncation:
    """The rollout's sampling truncation (vLLM semantics; -1 / 1.0 / 0.0 switch each part off)."""

    top_k: int = -1
    top_p: float = 1.0
    min_p: float = 0.0

    @property
    def active(self) -> bool:
        return self.top_k > 0 or self.top_p < 1.0 or self.min_p > 0.0


@torch.no_grad()
def kept_tokens(logits: torch.Tensor, truncation: Truncation) -> torch.Tensor:
    """``[N, V]`` bool: the tokens vLLM 0.29's sampler keeps, by its own operations in its order.

    min-p as ``MinPLogitsProcessor.apply``; top-k / top-p as ``apply_top_k_top_p_pytorch`` (top-k
    alone: ``apply_top_k_only``, the same set); the parameters as float32 tensors like vLLM's."""
    out = logits.detach().clone()
    n, vocab = out.shape
    neg_inf = float("-inf")
    if truncation.min_p > 0.0:
        probs = torch.nn.functional.softmax(out, dim=-1)
        threshold = probs.amax(dim=-1, keepdim=True).mul_(torch.tensor(truncation.min_p, dtype=torch.float32))
        out.masked_fill_(probs < threshold, neg_inf)
    top_k = truncation.top_k if 0 < truncation.top_k < vocab else None
    if truncation.top_p < 1.0:
        ordered, order = out.sort(dim=-1, descending=False)
        if top_k is not None:
            kth = ordered[:, vocab - top_k: vocab - top_k + 1]
            ordered.masked_fill_(ordered < kth, neg_inf)
        probs = ordered.softmax(dim=-1)
        cumulative = torch.cumsum(probs, dim=-1, out=probs)
        p = torch.full((n,), truncation.top_p, dtype=torch.float32, device=out.device)
        drop = cumulative <= 1 - p.unsqueeze(dim=1)
        drop[:, -1] = False  # the most likely token always stays
        ordered.masked_fill_(drop, neg_inf)
        out.scatter_(dim=-1, index=order, src=ordered)
    elif top_k is not None:
        kth = out.topk(top_k, dim=1).values[:, -1:]
        out.masked_fill_(out < kth, neg_inf)
    return out != neg_inf


def truncate_logits(logits: torch.Tensor, truncation: Truncation) -> torch.Tensor:
    """A copy of ``[N, V]`` logits with -inf at every token the truncation removes."""
    return logits.masked_fill(~kept_tokens(logits, truncation), float("-inf"))


_BIT_VALUES = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """``[N, V]`` bool -> ``[N, ceil(V / 8)]`` uint8 (bit j of byte i: column 8 i + j)."""
    n, vocab = mask.shape
    padded = torch.zeros(n, -(-vocab // 8) * 8, dtype=torch.uint8, device=mask.device)
    padded[:, :vocab] = mask
    return (padded.view(n, -1, 8) * _BIT_VALUES.to(mask.device)).sum(dim=-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, vocab: int) -> torch.Tensor:
    """Inverse of ``pack_bits``."""
    bits = packed.unsqueeze(-1).bitwise_and(_BIT_VALUES.to(packed.device)) != 0
    return bits.view(packed.shape[0], -1)[:, :vocab]


class TruncatedLogProbs(torch.autograd.Function):
    """``out[n, m] = z[n, index[n, m]] - logsumexp_{y kept} z[n, y]`` (-inf where the id is not kept).

    Backward: d out[n, m] / d z[n, y] = 1[y = index[n, m], y kept] - pi_trunc(y | n), so
    grad_z = scatter_add(index, g * kept[index]) - pi_trunc * sum_m g[n, m]. Saved: the logits,
    the kept set as bits, the ids and the log-normaliser; processed ``chunk`` rows at a time."""

    @staticmethod
    def forward(ctx, logits, index, truncation, chunk):
        n, vocab = logits.shape
        out = logits.new_empty(index.shape)
        lse = logits.new_empty(n)
        packed = torch.empty(n, -(-vocab // 8), dtype=torch.uint8, device=logits.device)
        for start in range(0, n, chunk):
            rows = logits[start:start + chunk]
            keep = kept_tokens(rows, truncation)
            packed[start:start + chunk] = pack_bits(keep)
            masked = rows.masked_fill(~keep, float("-inf"))
            lse[start:start + chunk] = torch.logsumexp(masked, dim=-1)
            out[start:start + chunk] = masked.gather(-1, index[start:start + chunk]) - lse[start:start + chunk, None]
        ctx.save_for_backward(logits, packed, index, lse)
        ctx.chunk = chunk
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        logits, packed, index, lse = ctx.saved_tensors
        vocab, chunk = logits.shape[1], ctx.chunk
        grad = torch.empty_like(logits)
        for start in range(0, logits.shape[0], chunk):
            stop = start + chunk
            keep = unpack_bits(packed[start:stop], vocab)
            probs = (logits[start:stop] - lse[start:stop, None]).exp_().masked_fill_(~keep, 0.0)
            g = grad_out[start:stop]
            rows = probs.mul_(-g.sum(dim=-1, keepdim=True))
            rows.scatter_add_(-1, index[start:stop], torch.where(keep.gather(-1, index[start:stop]), g, 0.0))
            grad[start:stop] = rows
        return grad, None, None, None


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
    index = flat_labels.long() if ids is None else torch.cat([flat_labels.long(), ids], dim=-1)
    out = TruncatedLogProbs.apply(flat, index, truncation, min(chunk, TRUNCATION_CHUNK_POSITIONS))
    label_lp = out[:, 0].view(labels.shape)
    if ids is None:
        return label_lp, None
    return label_lp, out[:, 1:].reshape(*labels.shape, ids.shape[-1])


def saved_tensor_bytes(fn) -> int:
    """Bytes autograd keeps for the backward of ``fn()``: every distinct storage a saved tensor
    points at, counted once and whole (a view keeps its whole base alive)."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())
