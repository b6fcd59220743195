"""The policy-loss registry.

A policy loss maps a ``PolicyBatch`` to a per-token loss (with gradient) before any mismatch
coefficient and aggregation. Registered functions share one signature,
``fn(batch: PolicyBatch, cfg) -> Surrogate``.

Every fact about a loss is a field of its ``PolicyLossEntry`` (see there).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional, Tuple

from ._torch import torch

from . import metrics
from .metrics import Mean
from .registry import Entry, Registry


@dataclass(frozen=True)
class PolicyLossEntry(Entry):
    """A registered policy loss.

    sequence_level      the loss is a per-sequence quantity: aggregation is forced to
                        seq-mean-token-mean (``token_level_loss=False``), as upstream does for gspo.
    accepts_correction  False when the loss anchors on mu itself and a vllm_is correction would
                        apply the mismatch twice (dppo).
    reads_rollout       the loss reads pi_roll itself (dppo's mu), with or without a correction.
    anchors_on_rollout  with a correction enabled the loss measures its ratio against pi_roll and
                        applies no coefficient (upstream's gspo semantics).
    ppo_clip            the loss reads the PPO clip (clip_eps_low/high, dual_clip; upstream's
                        --actor.eps_clip* / --actor.dual_clip); absent means False.
    reads_rollout       the loss reads pi_roll whenever it is given (falls back to pi_old), so the
                        integration requests rollout log-probs from vLLM (dppo).
    validate            ``validate(config)`` raises ValueError on a bad combination of its parameters.
    split_invariant     False when the loss reads statistics of the whole loss call (a mean, a
                        top-k), so that micro-batches with global normalisers do not add up to
                        the full batch (clip_cov, kl_cov: as in verl).
    divergence_param    the method parameter that names the divergence the loss reads, if any.
    metrics             the names of the diagnostics it adds to ``PolicyLoss.metrics``.
    preset              the preset with the paper's values (``configs/*.yaml``); variants: other presets.
    upstream_flags      upstream flags that set its parameters (README table).
    script              the example launch script (``examples/scripts/``) that runs the preset.
    formula             per-token loss, gradient_weight: its weight on ``A grad log pi_theta``
                        (both for the README table).
    """

    validate: Optional[Callable] = None
    sequence_level: bool = False
    accepts_correction: bool = True
    anchors_on_rollout: bool = False
    reads_rollout: bool = False
    split_invariant: bool = True
    divergence_param: Optional[str] = None
    metrics: Tuple[str, ...] = ()
    preset: str = ""
    variants: Tuple[str, ...] = ()
    script: str = "train_preset.sh"
    formula: str = ""
    gradient_weight: str = ""
    upstream_flags: Tuple[str, ...] = ()
    ppo_clip: bool = False


# Listing order: these modules first, then every other module of the package (alphabetically).
_FAMILIES = ("ppo", "sapo", "cispo", "dppo", "is_reshape")
POLICY_LOSSES = Registry(
    "policy loss",
    entry_type=PolicyLossEntry,
    load=tuple(f"{__package__}.{m}" for m in _FAMILIES) + (f"{__package__}.*",),
)


def no_clipping(batch) -> None:
    """``Surrogate.clipped`` of a loss that never clips (upstream's clip_ratio is then 0)."""
    return None


def token_mean(x: torch.Tensor, batch) -> Mean:
    """A diagnostic's mean over the batch's valid action tokens, exact over a training step."""
    return metrics.token_mean(x, batch.mask)


def lazy_token_mean(x: torch.Tensor, batch) -> Callable[[], Mean]:
    """``token_mean`` computed only when the metric is read (``PolicyLoss.statistics`` calls it)."""
    return partial(token_mean, x.detach(), batch)  # a partial, not a lambda: PolicyLoss stays picklable
