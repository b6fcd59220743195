"""Metrics that are exact over a training step, whatever its split into micro-batches and DP ranks.

A metric is logged once per training step, but computed per micro-batch on each data-parallel
rank. Averaging per-micro-batch values is exact only for some metrics (a token mean weighted by
tokens), and wrong for a maximum, a per-sequence rate, an effective sample size. So every metric
is a typed *statistic*: a few partial fields, each reduced over the step by a sum or a max, and a
``value()`` computed from the reduced fields. The value of the reduced statistic is the metric on
the whole step's batch (up to float rounding).

    Mean(total, count)        total / count (0 if count is 0): token means, sequence means, rates
    Max(value)                the largest value (0 if there was none)
    EffectiveSampleSize(sum_w, sum_w2, count)
                              Kish's normalised ESS (sum w)^2 / (count sum w^2) of the whole step

Constructors for the common cases: ``token_mean(x, mask)``, ``sequence_mean(values, valid)``,
``maximum(x, mask)``, ``effective_sample_size(w, mask)``. Adding a metric is one line in a
method's metrics dict, e.g. ``{"staleness/max_lag": maximum(lag, valid)}``; a new kind of statistic
is a subclass declaring which fields are summed (``SUMS``) and which maximised (``MAXIMA``).

A plain tensor in a metrics dict is read as upstream reads it: 0-d as a token mean over the
micro-batch's valid tokens, 1-d ``[B]`` as per-sequence values (``as_statistic``).

``StepMetrics`` (used by the OpenRLHF integration) accumulates the statistics of a step's
micro-batches and turns them into the logged values. Sum fields travel through upstream's own
status reduction (each logged as a 1-element tensor ``field / B``, which upstream's per-sample
weighting turns back into ``sum(field) / sum(B)`` over micro-batches and ranks; every value is a
ratio of fields, so the common factor cancels); max fields are reduced locally and then across
ranks with one all-reduce(max).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, ClassVar, Dict, Iterable, Mapping, Optional, Tuple, Type

from ._torch import torch

HIDDEN_PREFIX = "_offpolicy_stat"


def _scalar(x) -> torch.Tensor:
    return torch.as_tensor(x).detach().to(torch.float64).reshape(())


@dataclass(frozen=True)
class Statistic:
    """Base class: fields named in ``SUMS`` are summed over the step, those in ``MAXIMA`` maximised."""

    SUMS: ClassVar[Tuple[str, ...]] = ()
    MAXIMA: ClassVar[Tuple[str, ...]] = ()
    REDUCTION: ClassVar[str] = ""

    def value(self) -> torch.Tensor:
        raise NotImplementedError

    def item(self) -> float:
        """The value on this statistic's data (a micro-batch's, or the reduced step's)."""
        return float(self.value())

    __float__ = item

    def parts(self) -> Dict[str, torch.Tensor]:
        return {f.name: _scalar(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_parts(cls, parts: Mapping[str, object]) -> "Statistic":
        return cls(**{name: _scalar(parts[name]) for name in (*cls.SUMS, *cls.MAXIMA)})

    @classmethod
    def combine(cls, items: Iterable["Statistic"]) -> "Statistic":
        """The statistic of the union of the items' data."""
        items = list(items)
        parts = {}
        for name in cls.SUMS:
            parts[name] = torch.stack([item.parts()[name] for item in items]).sum()
        for name in cls.MAXIMA:
            parts[name] = torch.stack([item.parts()[name] for item in items]).max()
        return cls.from_parts(parts)


@dataclass(frozen=True)
class Mean(Statistic):
    """``total / count`` over the step (0 where count is 0)."""

    total: torch.Tensor
    count: torch.Tensor
    SUMS: ClassVar[Tuple[str, ...]] = ("total", "count")
    REDUCTION: ClassVar[str] = "sum(total) / sum(count)"

    def value(self) -> torch.Tensor:
        total, count = _scalar(self.total), _scalar(self.count)
        return torch.where(count > 0, total / count.clamp(min=1e-300), torch.zeros_like(total))


@dataclass(frozen=True)
class Max(Statistic):
    """The largest value over the step (0 if there was none)."""

    value_max: torch.Tensor
    MAXIMA: ClassVar[Tuple[str, ...]] = ("value_max",)
    REDUCTION: ClassVar[str] = "max"

    def value(self) -> torch.Tensor:
        v = _scalar(self.value_max)
        return torch.where(torch.isfinite(v), v, torch.zeros_like(v))


@dataclass(frozen=True)
class EffectiveSampleSize(Statistic):
    """Kish's normalised ESS ``(sum w)^2 / (count * sum w^2)`` in [0, 1] (0 when every w is 0)."""

    sum_w: torch.Tensor
    sum_w2: torch.Tensor
    count: torch.Tensor
    SUMS: ClassVar[Tuple[str, ...]] = ("sum_w", "sum_w2", "count")
    REDUCTION: ClassVar[str] = "sum(w)^2 / (sum(count) sum(w^2))"

    def value(self) -> torch.Tensor:
        s1, s2, n = _scalar(self.sum_w), _scalar(self.sum_w2), _scalar(self.count)
        ok = (s2 > 0) & (n > 0)
        return torch.where(ok, s1 * s1 / (n * s2).clamp(min=1e-300), torch.zeros_like(s1))


def _floating(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` detached, in a floating dtype (``like``'s when ``x`` is bool or integer)."""
    x = x.detach()
    if x.is_floating_point():
        return x
    return x.to(like.dtype if like.is_floating_point() else torch.float32)


def masked_total(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(x * mask) in x's floating dtype, in one read-only pass (no full-size temporary)."""
    x = _floating(x, mask)
    m = mask.detach().to(x.dtype)
    return torch.dot(x.reshape(-1), m.reshape(-1)) if x.numel() else x.sum()


def token_mean(x: torch.Tensor, mask: torch.Tensor, count: Optional[torch.Tensor] = None) -> Mean:
    """Mean of ``x`` over the tokens where ``mask`` is 1 (reduced in x's dtype, parts kept in float64).

    ``count`` is ``mask.sum()`` when the caller already has it (one pass fewer per statistic)."""
    return Mean(total=masked_total(x, mask), count=mask.detach().sum() if count is None else count.detach())


def sequence_mean(values: torch.Tensor, valid: torch.Tensor) -> Mean:
    """Mean of per-sequence ``values`` ``[B]`` over the sequences where ``valid`` is true."""
    return Mean(total=masked_total(values, valid), count=valid.detach().sum())


def maximum(x: torch.Tensor, mask: torch.Tensor) -> Max:
    """Largest ``x`` where ``mask`` is true (-inf, reported as 0, if nowhere)."""
    x = _floating(x, mask)
    if not x.numel():
        return Max(value_max=torch.tensor(float("-inf"), dtype=torch.float64))
    picked = torch.where(mask.bool(), x, torch.tensor(float("-inf"), dtype=x.dtype, device=x.device))
    return Max(value_max=picked.max())


def effective_sample_size(weights: torch.Tensor, mask: torch.Tensor) -> EffectiveSampleSize:
    """ESS of ``weights`` over the tokens where ``mask`` is 1."""
    w = _floating(weights, mask)
    m = mask.detach().to(w.dtype)
    wm = (w * m).reshape(-1)
    return EffectiveSampleSize(sum_w=wm.sum(), sum_w2=torch.dot(wm, wm) if wm.numel() else wm.sum(),
                               count=m.sum())


def as_statistic(value, token_mask: torch.Tensor) -> Statistic:
    """A metrics-dict entry as a statistic: typed ones as they are, plain tensors as upstream reads them."""
    if isinstance(value, Statistic):
        return value
    value = torch.as_tensor(value).detach().to(torch.float64)
    if value.dim() == 0:
        count = token_mask.detach().to(torch.float64).sum()
        return Mean(total=value * count, count=count)
    if value.dim() == 1:
        return Mean(total=value.sum(), count=torch.tensor(float(value.numel()), dtype=torch.float64))
    raise ValueError(f"a metric must be a Statistic, a 0-d or a 1-d tensor; got shape {tuple(value.shape)}")


# --------------------------------------------------------------------------- one training step
def hidden_key(metric: str, field: str) -> str:
    return f"{HIDDEN_PREFIX}:{metric}:{field}"


class StepMetrics:
    """The statistics of one training step (``ppo_train``), on one rank.

    ``add`` puts a micro-batch's sum fields into upstream's status (per-sample weighted) and keeps a
    running max of its max fields; ``finalize`` rebuilds every statistic from upstream's reduced
    status and the all-reduced maxima and writes its value under the metric's name.
    """

    def __init__(self) -> None:
        self.kinds: Dict[str, Type[Statistic]] = {}
        self.maxima: Dict[str, float] = {}

    def reset(self) -> None:
        self.kinds.clear()
        self.maxima.clear()

    def add(self, statistics: Mapping[str, Statistic], status: dict, num_samples: int) -> None:
        """One micro-batch: its sum fields stacked, scaled and cast together (one tensor for all of them,
        written to the status as views), its max fields read from the device once."""
        metrics, weights = status["metrics"], status["weights"]
        scale = 1.0 / max(int(num_samples), 1)
        sums, maxima = {}, {}
        for name, stat in statistics.items():
            known = self.kinds.setdefault(name, type(stat))
            if known is not type(stat):
                raise TypeError(f"metric {name!r} changed kind within a step: {known.__name__} -> "
                                f"{type(stat).__name__}")
            parts = stat.parts()
            sums.update({hidden_key(name, field): parts[field] for field in stat.SUMS})
            maxima.update({hidden_key(name, field): parts[field] for field in stat.MAXIMA})
        if sums:
            values = _stack(sums.values()).mul_(scale).to(torch.float32)
            for i, key in enumerate(sums):
                metrics[key] = values[i:i + 1]
                weights[key] = "sample"
        if maxima:
            for key, value in zip(maxima, _stack(maxima.values()).tolist()):
                self.maxima[key] = max(self.maxima.get(key, float("-inf")), value)

    def local_maxima(self) -> Dict[str, float]:
        return dict(sorted(self.maxima.items()))

    def finalize(self, status: dict, maxima: Optional[Mapping[str, float]] = None,
                 numeric: Callable[[torch.Tensor], float] = lambda t: float(t)) -> dict:
        """``status`` (upstream's ``ppo_train`` result) with our hidden fields replaced by the metrics."""
        maxima = dict(maxima or {})
        out = {k: v for k, v in status.items() if not str(k).startswith(HIDDEN_PREFIX + ":")}
        if not status:
            return out
        for name, kind in self.kinds.items():
            parts = {}
            for field in kind.SUMS:
                parts[field] = status.get(hidden_key(name, field), 0.0)
            for field in kind.MAXIMA:
                parts[field] = maxima.get(hidden_key(name, field), float("-inf"))
            out[name] = numeric(kind.from_parts(parts).value())
        return out


def _stack(parts: Iterable[torch.Tensor]) -> torch.Tensor:
    """0-d float64 parts -> one 1-d tensor, on the device of the first (a few parts are host scalars)."""
    parts = list(parts)
    device = parts[0].device
    return torch.stack([p if p.device == device else p.to(device) for p in parts])


def reductions() -> Dict[str, str]:
    """Every statistic kind and how it is reduced (for the docs)."""
    return {cls.__name__: cls.REDUCTION for cls in (Mean, Max, EffectiveSampleSize)}

