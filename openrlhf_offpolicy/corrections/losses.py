"""The policy-loss registry.

A policy loss maps a ``PolicyBatch`` to a per-token loss (with gradient) before any mismatch
coefficient and aggregation. Registered functions share one signature,
``fn(batch: PolicyBatch, cfg) -> Surrogate``.

Registration meta:
    sequence_level      the loss is a per-sequence quantity: aggregation is forced to
                        seq-mean-token-mean (``token_level_loss=False``), as upstream does for gspo.
    accepts_correction  False when the loss anchors on mu itself and a vllm_is correction would
                        apply the mismatch twice (dppo).
    reads_rollout       the loss reads pi_roll itself (dppo's mu), with or without a correction.
    anchors_on_rollout  with a correction enabled the loss measures its ratio against pi_roll and
                        applies no coefficient (upstream's gspo semantics).
"""

from __future__ import annotations

import torch

from . import metrics
from .metrics import Mean
from .registry import Registry

POLICY_LOSSES = Registry(
    "policy loss", defaults={"sequence_level": False, "accepts_correction": True, "anchors_on_rollout": False,
              "reads_rollout": False}
)


def no_clipping(batch) -> torch.Tensor:
    return torch.zeros_like(batch.mask, dtype=torch.bool)


def token_mean(x: torch.Tensor, batch) -> Mean:
    """A diagnostic's mean over the batch's valid action tokens, exact over a training step."""
    return metrics.token_mean(x, batch.mask)
