"""The policy-loss registry.

A policy loss maps a ``PolicyBatch`` to a per-token loss (with gradient) before any mismatch
coefficient and aggregation. Registered functions share one signature,
``fn(batch: PolicyBatch, cfg) -> Surrogate``.

Registration meta:
    sequence_level      the loss is a per-sequence quantity: aggregation is forced to
                        seq-mean-token-mean (``token_level_loss=False``), as upstream does for gspo.
    accepts_correction  False when the loss anchors on mu itself and a vllm_is correction would
                        apply the mismatch twice (dppo).
    anchors_on_rollout  with a correction enabled the loss measures its ratio against pi_roll and
                        applies no coefficient (upstream's gspo semantics).
"""

from __future__ import annotations

from typing import Callable

import torch

from .registry import Registry
from .stats import masked_mean

POLICY_LOSSES = Registry(
    "policy loss", defaults={"sequence_level": False, "accepts_correction": True, "anchors_on_rollout": False}
)


def no_clipping(batch) -> None:
    """``Surrogate.clipped`` of a loss that never clips (upstream's clip_ratio is then 0)."""
    return None


def token_mean(x: torch.Tensor, batch) -> torch.Tensor:
    """Detached mean of a diagnostic over the batch's valid action tokens."""
    return masked_mean(x.detach().float(), batch.mask)


def lazy_token_mean(x: torch.Tensor, batch) -> Callable[[], torch.Tensor]:
    """``token_mean`` computed only when the metric is read (``PolicyLoss.metrics`` calls it)."""
    x = x.detach()
    return lambda: token_mean(x, batch)
