"""The mismatch-correction registry and the two gate shapes every correction is built from.

A correction reads the detached mismatch ratio ``rho_t = pi_old / pi_roll`` (or a divergence)
and returns a ``Correction``: a detached coefficient ``c_t`` that multiplies the per-token policy
loss. Registered functions share one signature, ``fn(batch: PolicyBatch, cfg) -> Correction``.

Every fact about a correction is a field of its ``CorrectionEntry`` (see there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from ._torch import torch

from .batch import Correction, PolicyBatch
from .registry import Entry, Registry
from .stats import broadcast_seq


@dataclass(frozen=True)
class CorrectionEntry(Entry):
    """A registered correction.

    threshold         "ratio": reads the ``[low, high]`` band as bounds on a ratio
                      (0 <= low <= 1 <= high); "divergence": reads it as ``[0, delta]`` on a
                      divergence; None: ignores it.
    legacy            accepted together with ``policy_loss_type="gspo"``, which (like upstream)
                      anchors its sequence ratio on pi_roll and applies no coefficient.
    hidden            reachable through upstream's ``is_correction_*`` kwargs but not listed as a
                      ``--vllm_is_correction_type`` choice.
    validate          ``validate(config)`` raises ValueError on a bad combination of its parameters.
    divergence_param  the method parameter that names the divergence it reads, if any.
    bypass_compatible ``bypass_compatible(config)`` is True when the correction still compares two
                      different policies with pi_old := pi_roll (``--bypass_old_logprobs``); its
                      docstring says when. None: never (rho = pi_old / pi_roll would be 1).
    metrics           the names of the diagnostics it adds beyond the common ``is/*`` ones.
    preset, script    its preset (``configs/*.yaml``) and example launch script; variants: other presets.
    statistic, action, coefficient  what it gates, what it does and ``c_t`` on kept tokens (README).
    """

    threshold: Optional[str] = "ratio"
    legacy: bool = False
    hidden: bool = False
    validate: Optional[Callable] = None
    divergence_param: Optional[str] = None
    bypass_compatible: Optional[Callable] = None
    metrics: Tuple[str, ...] = ()
    preset: str = ""
    variants: Tuple[str, ...] = ()
    script: str = "train_preset.sh"
    statistic: str = ""
    action: str = ""
    coefficient: str = ""


# Listing order: these modules first, then every other module of the package (alphabetically).
_FAMILIES = ("gates", "token_is", "sequence_is", "prefix_is", "trust_region")
CORRECTIONS = Registry(
    "correction",
    entry_type=CorrectionEntry,
    load=tuple(f"{__package__}.{m}" for m in _FAMILIES) + (f"{__package__}.*",),
)

NO_CORRECTION = "none"


@CORRECTIONS.register(NO_CORRECTION, threshold=None, legacy=True, hidden=True)
def no_correction(batch: PolicyBatch, cfg) -> Correction:
    """Identity: c_t = 1 on every action token."""
    nothing = torch.zeros_like(batch.mask, dtype=torch.bool)
    return Correction(coef=batch.mask, rejected=nothing, filtered=nothing)


def token_gate(batch: PolicyBatch, keep: torch.Tensor, weight: torch.Tensor) -> Correction:
    """Reject tokens where ``keep`` is False; kept tokens carry ``weight``. ``keep`` is ``[B, T]``."""
    keep = keep & batch.on
    rejected = ~keep & batch.on
    return Correction(coef=torch.where(keep, weight, torch.zeros_like(weight)), rejected=rejected, filtered=rejected)


def sequence_gate(batch: PolicyBatch, keep_seq: torch.Tensor, weight: torch.Tensor) -> Correction:
    """Reject whole sequences where ``keep_seq`` (``[B]``) is False; kept tokens carry ``weight``."""
    keep = broadcast_seq(keep_seq, batch.mask) & batch.on
    rejected = ~keep & batch.on
    return Correction(
        coef=torch.where(keep, weight, torch.zeros_like(weight)),
        rejected=rejected,
        filtered=~keep_seq,
    )


def token_ratio(batch: PolicyBatch) -> torch.Tensor:
    """rho_t = pi_old / pi_roll per token (detached; ``log_rho`` is already clamped)."""
    return batch.log_rho.exp()
