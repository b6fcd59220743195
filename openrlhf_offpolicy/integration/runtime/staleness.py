"""Policy versions and staleness: the bookkeeping, free of OpenRLHF (standard library only).

A *version* counts the policy updates behind a set of weights: the trainer's weights after ``k``
optimizer steps have version ``k``; a rollout engine holds the version last broadcast to it.
Every sample carries ``SampleVersion(low, high)``: the version of the engine weights when its
rollout started (``low``) and the highest version any of its tokens can come from (``high``;
``high > low`` only when a weight update lands while the sample is being generated, i.e. with
partial rollouts). At training time, with the trainer at version ``v``:

    staleness_i = v - low_i                (how many updates the behaviour policy lags)

``--max_staleness N`` drops every sample with ``staleness_i > N`` before the step trains. When it
drops any, the kept samples are then cut to a multiple of ``unit`` (``lockstep_keep``: the
freshest whole prompt groups stay), so that every data-parallel rank gets the same number of
micro-steps (see ``policy_versions.lockstep_unit``); those count as dropped too.
``staleness_stats`` reduces one training step exactly (it sees the whole step's samples, on the
controller, so no reduction over micro-batches or DP ranks is involved):

    staleness/mean          mean_i staleness_i over the kept samples
    staleness/max           max_i staleness_i over the kept samples
    staleness/partial_frac  #{kept i: high_i > low_i} / #kept
    staleness/dropped_frac  #dropped / #generated

Asynchronous RL with bounded staleness: AReaL (Fu et al., arXiv 2505.24298), PipelineRL
(Piché et al., arXiv 2509.19128).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class SampleVersion:
    """The policy versions a sample's tokens were generated with: ``low <= version <= high``."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high:
            raise ValueError(f"need 0 <= low <= high, got low={self.low}, high={self.high}")

    @property
    def partial(self) -> bool:
        """A weight update may have landed between its first and its last token."""
        return self.high > self.low


def staleness_of(trainer_version: int, version: SampleVersion) -> int:
    """Updates between the weights the rollout started from and the trainer's weights."""
    lag = trainer_version - version.low
    if lag < 0:
        raise ValueError(f"sample of version {version.low} is newer than the trainer (version {trainer_version}): "
                         "the version bookkeeping is broken")
    return lag


def keep_mask(trainer_version: int, versions: Sequence[SampleVersion], max_staleness: Optional[int]) -> List[bool]:
    """Which samples train: all, or those at most ``max_staleness`` updates old."""
    lags = [staleness_of(trainer_version, v) for v in versions]
    return [max_staleness is None or lag <= max_staleness for lag in lags]


def staleness_stats(trainer_version: int, versions: Sequence[SampleVersion], kept: Sequence[bool]) -> Dict[str, float]:
    """The step's ``staleness/*`` metrics (see the module docstring); exact, over the whole step."""
    if len(versions) != len(kept):
        raise ValueError(f"{len(versions)} versions but {len(kept)} keep flags")
    lags = [staleness_of(trainer_version, v) for v in versions]
    kept_lags = [lag for lag, k in zip(lags, kept) if k]
    kept_partial = [v.partial for v, k in zip(versions, kept) if k]
    n, n_kept = len(versions), len(kept_lags)
    return {
        "staleness/mean": sum(kept_lags) / n_kept if n_kept else 0.0,
        "staleness/max": float(max(kept_lags)) if n_kept else 0.0,
        "staleness/partial_frac": sum(kept_partial) / n_kept if n_kept else 0.0,
        "staleness/dropped_frac": (n - n_kept) / n if n else 0.0,
        "staleness/trainer_version": float(trainer_version),
    }


def lockstep_keep(kept: Sequence[bool], lags: Sequence[int], unit: int, group: int = 1) -> List[bool]:
    """``kept`` cut to the largest multiple of ``unit`` samples: the freshest whole groups of
    ``group`` consecutive samples stay (earlier groups first among equally fresh ones)."""
    if unit < 1 or group < 1 or unit % group or len(kept) % group:
        raise ValueError(f"need a unit ({unit}) that is a multiple of the group size ({group}), "
                         f"and {len(kept)} samples in whole groups")
    starts = [g for g in range(0, len(kept), group) if all(kept[g: g + group])]
    if any(kept[g: g + group] != [True] * group and any(kept[g: g + group]) for g in range(0, len(kept), group)):
        raise ValueError("samples of a prompt group must be kept or dropped together")
    budget = len(starts) * group // unit * unit // group
    chosen = set(sorted(starts, key=lambda g: (lags[g], g))[:budget])
    return [i - i % group in chosen for i in range(len(kept))]


def filter_step(trainer_version: int, samples: Sequence, versions: Sequence[SampleVersion],
                max_staleness: Optional[int], unit: int = 1, group: int = 1) -> Tuple[list, Dict[str, float]]:
    """(the samples that train, the step's metrics). When staleness drops anything, the rest is cut
    to a multiple of ``unit`` whole groups of ``group`` samples (``lockstep_keep``)."""
    kept = keep_mask(trainer_version, versions, max_staleness)
    if not all(kept):
        lags = [staleness_of(trainer_version, v) for v in versions]
        kept = lockstep_keep(kept, lags, math.lcm(unit, group), group)
    return [s for s, k in zip(samples, kept) if k], staleness_stats(trainer_version, versions, kept)
