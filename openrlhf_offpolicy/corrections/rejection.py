"""Composable rejection: hard filters on the rollout/training mismatch, AND-combined.

A criterion is a string (``--rejection CRITERION [...]``, kwarg ``rejection=("seq_max_k2:0.05", ...)``):

    AGG_METRIC:HIGH  or  AGG_METRIC:LOW:HIGH     AGG in token, seq_sum, seq_mean, seq_max

over the per-token mismatch statistics, with ``log rho_t = log pi_old - log pi_roll`` (Schulman's
estimators of KL(pi_roll || pi_old), "Approximating KL divergence", 2020):

    k1 = log rho_t                 signed: a band [LOW, HIGH]; a single value H means [-H, H]
    k2 = 0.5 (log rho_t)^2         upper bound only
    k3 = rho_t - 1 - log rho_t     upper bound only

``token`` drops the tokens whose statistic leaves the band; ``seq_sum`` / ``seq_mean`` /
``seq_max`` drop a whole sequence when the sum / mean / max of the statistic over its action
tokens leaves it (``seq_max`` only for the non-negative k2 and k3). Three special criteria:

    token_kpop:PHI   drop a token when max(binKL(pi_roll(a) || pi_old(a)), binKL(pi_old(a) || pi_roll(a)))
                     > PHI, binKL being the KL over {a, not a}
    opsm:DELTA       Off-Policy Sequence Masking (DeepSeek-V3.2, arXiv 2512.02556): drop a sequence
                     when A < 0 and mean_t (log pi_roll - log sg(pi_theta)) > DELTA; A is the
                     sequence's mean advantage over its action tokens
    veto:LOW         drop a sequence when any of its tokens has rho_t < LOW

The old gates are special cases (the tests check the masks are the same): seq-mis is
``seq_sum_k1``, geo-mask is ``seq_mean_k1``, icepop is ``token_k1`` (each with the log of the ratio
band), TRM's max criterion is ``seq_max_k2`` and its mean criterion ``seq_mean_k3``.

Every criterion is AND-combined with the others and with the selected correction's coefficient:
a token survives only if every criterion keeps it, and it then carries the correction's weight.
Rejected tokens and sequences keep counting in the loss denominator (the aggregation never
changes its normaliser). Metrics: ``rejection/<criterion>/masked_frac`` (a 0-d token fraction for
token criteria, a sequence mean over the sequences with action tokens for sequence criteria) and
``rejection/masked_frac`` (token mean: action tokens that at least one criterion rejected); all are
step statistics (``metrics``), exact over a training step.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Dict, Iterable, Sequence, Tuple, Union

from ._torch import torch

from .batch import Correction, PolicyBatch
from .divergences import binary_kl
from .metrics import Mean, sequence_mean, token_mean
from .registry import float32_problem, shorten
from .stats import broadcast_seq

AGGREGATIONS = ("token", "seq_sum", "seq_mean", "seq_max")
STATISTICS = ("k1", "k2", "k3")
SPECIAL = ("token_kpop", "opsm", "veto")


@dataclass(frozen=True)
class Criterion:
    """One parsed rejection criterion: ``rule`` with the band ``[low, high]`` it keeps."""

    name: str  # as written (whitespace stripped); also the metric's name
    rule: str  # "seq_max_k2", "token_kpop", "opsm", "veto", ...
    low: float
    high: float

    def __str__(self) -> str:
        return self.name

    @property
    def per_sequence(self) -> bool:
        return not self.rule.startswith("token")

    def keep(self, batch: PolicyBatch, stats: "TokenStats") -> torch.Tensor:
        """Bool keep-mask: ``[B, T]`` for a token criterion, ``[B]`` for a sequence criterion."""
        return RULES[self.rule](batch, stats, self.low, self.high)


class TokenStats:
    """k1/k2/k3 of one batch, each computed once however many criteria read it (0 off the mask)."""

    def __init__(self, batch: PolicyBatch) -> None:
        self.batch = batch
        self._cache: Dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._cache:
            log_rho = self.batch.log_rho  # clamped, 0 off the mask
            if name == "k1":
                value = log_rho
            elif name == "k2":
                value = 0.5 * log_rho * log_rho
            else:  # k3; expm1 avoids the cancellation of (1 + small) - 1, and is 0 where log_rho is 0
                value = torch.expm1(log_rho) - log_rho
            self._cache[name] = value
        return self._cache[name]


def _in(stat: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return (stat >= low) & (stat <= high)


def _aggregate(agg: str, x: torch.Tensor, batch: PolicyBatch) -> torch.Tensor:
    if agg == "token":
        return x
    if agg == "seq_sum":
        return x.sum(dim=-1)
    if agg == "seq_mean":
        return (x * batch.mask).sum(dim=-1) / batch.mask.sum(dim=-1).clamp(min=1.0)
    # seq_max of a non-negative statistic that is 0 off the mask: the plain row max.
    return x.amax(dim=-1) if x.shape[-1] else x.sum(dim=-1)


def _band_rule(agg: str, statistic: str) -> Callable:
    def rule(batch: PolicyBatch, stats: TokenStats, low: float, high: float) -> torch.Tensor:
        return _in(_aggregate(agg, stats[statistic], batch), low, high)

    return rule


def _token_kpop(batch: PolicyBatch, stats: TokenStats, low: float, high: float) -> torch.Tensor:
    roll, old = batch.rollout_log_probs, batch.old_log_probs
    worst = torch.maximum(binary_kl(roll, old), binary_kl(old, roll))
    return worst <= high


def _opsm(batch: PolicyBatch, stats: TokenStats, low: float, high: float) -> torch.Tensor:
    mask, counts = batch.mask, batch.mask.sum(dim=-1).clamp(min=1.0)
    drift = ((batch.rollout_log_probs - batch.log_probs.detach()) * mask).sum(dim=-1) / counts
    advantage = (batch.advantages * mask).sum(dim=-1) / counts
    return ~((advantage < 0) & (drift > high))


def _veto(batch: PolicyBatch, stats: TokenStats, low: float, high: float) -> torch.Tensor:
    # log_rho is 0 off the mask and log(low) < 0, so padding never vetoes.
    log_rho = stats["k1"]
    lowest = log_rho.amin(dim=-1) if log_rho.shape[-1] else log_rho.sum(dim=-1)
    return lowest >= math.log(low)


RULES: Dict[str, Callable] = {f"{a}_{s}": _band_rule(a, s) for a in AGGREGATIONS for s in STATISTICS
                              if not (a == "seq_max" and s == "k1")}
RULES.update(token_kpop=_token_kpop, opsm=_opsm, veto=_veto)


# A plain ASCII decimal: no digit separators, no non-ASCII digits, no inf/nan, no hex.
DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _number(text: str, criterion: str) -> float:
    if not DECIMAL.fullmatch(text):
        raise ValueError(f"rejection criterion {shorten(criterion)}: {shorten(text)} is not a number "
                         "(a finite ASCII decimal such as 0.05)")
    value = float(text)
    problem = float32_problem(value)
    if problem:
        raise ValueError(f"rejection criterion {shorten(criterion)}: bound {shorten(text)} {problem}")
    return value


def parse_criterion(text: str) -> Criterion:
    """``"seq_max_k2:0.05"`` -> ``Criterion``; ValueError with a one-line reason on bad input."""
    if not isinstance(text, str):
        raise ValueError(f"a rejection criterion must be a string like 'seq_max_k2:0.05', got {shorten(text)}")
    name = text.strip()
    rule, *bounds_text = name.split(":")
    if rule not in RULES:
        hint = " (seq_max takes k2 or k3 only: k1 is signed)" if rule == "seq_max_k1" else ""
        raise ValueError(
            f"unknown rejection criterion {shorten(rule)} in {shorten(name)}{hint}; "
            "use AGG_METRIC:HIGH or AGG_METRIC:LOW:HIGH "
            f"with AGG in {list(AGGREGATIONS)} and METRIC in {list(STATISTICS)}, or {', '.join(SPECIAL)}"
        )
    bounds = [_number(b, name) for b in bounds_text]
    statistic = rule.rsplit("_", 1)[-1]
    if statistic == "k1":
        if len(bounds) == 1:
            if not bounds[0] > 0:
                raise ValueError(f"rejection criterion {shorten(name)}: a single k1 bound H means [-H, H] "
                                 "and needs H > 0")
            bounds = [-bounds[0], bounds[0]]
        if len(bounds) != 2:
            raise ValueError(f"rejection criterion {shorten(name)}: k1 takes HIGH or LOW:HIGH")
        low, high = bounds
        if not low <= 0.0 <= high or low == high:
            raise ValueError(f"rejection criterion {shorten(name)}: the log-ratio band [{low}, {high}] must contain 0 "
                             "(an on-policy token) and have LOW < HIGH")
        return Criterion(name, rule, low, high)
    if len(bounds) != 1:
        raise ValueError(f"rejection criterion {shorten(name)} takes exactly one value ({rule}:VALUE)")
    value = bounds[0]
    if rule == "veto":
        if not 0.0 < value < 1.0:
            raise ValueError(f"rejection criterion {shorten(name)}: veto:LOW needs 0 < LOW < 1 (a ratio floor)")
        return Criterion(name, rule, value, math.inf)
    if rule == "opsm":
        return Criterion(name, rule, -math.inf, value)
    if not value > 0:  # k2, k3, token_kpop: an upper bound on a non-negative divergence
        raise ValueError(f"rejection criterion {shorten(name)}: {rule} takes an upper bound > 0 only")
    return Criterion(name, rule, 0.0, value)


def parse_rejection(value: Union[None, str, Iterable[str]]) -> Tuple[Criterion, ...]:
    """The ``rejection`` kwarg: None, one criterion string, or a list/tuple of them; the same criterion
    (rule and bounds, however written: ``0.05`` and ``0.050``) at most once."""
    if value is None:
        return ()
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, (list, tuple)):
        texts = list(value)
    else:
        raise ValueError(f"rejection must be a criterion string or a list of them (e.g. ['seq_max_k2:0.05']), "
                         f"got {shorten(value)}")
    criteria = tuple(parse_criterion(t) for t in texts)
    seen: Dict[tuple, Criterion] = {}
    for criterion in criteria:
        key = (criterion.rule, criterion.low, criterion.high)
        if key in seen:
            raise ValueError(f"rejection criterion given twice: {shorten(seen[key].name)} and "
                             f"{shorten(criterion.name)} are the same criterion")
        seen[key] = criterion
    return criteria


def apply_rejection(correction: Correction, batch: PolicyBatch, criteria: Sequence[Criterion]) -> Correction:
    """AND the criteria's keep-masks into the correction: rejected tokens get coefficient 0.

    With no criteria the correction is returned unchanged.
    """
    if not criteria:
        return correction
    stats = TokenStats(batch)
    keep = batch.on
    metrics: Dict[str, Callable[[], torch.Tensor]] = {}
    for criterion in criteria:
        kept = criterion.keep(batch, stats)
        metrics[f"rejection/{criterion.name}/masked_frac"] = _masked_frac(kept, criterion.per_sequence, batch)
        if criterion.per_sequence:
            kept = broadcast_seq(kept, batch.mask)
        keep = keep & kept
    rejected_here = batch.on & ~keep
    metrics["rejection/masked_frac"] = partial(token_mean, rejected_here, batch.mask)
    coef = torch.where(keep, correction.coef, torch.zeros_like(correction.coef))
    return replace(correction, coef=coef, rejected=correction.rejected | rejected_here,
                   metrics={**correction.metrics, **metrics})


def _masked_frac(kept: torch.Tensor, per_sequence: bool, batch: PolicyBatch) -> Callable[[], Mean]:
    """The criterion's rejection rate, read lazily: a sequence mean, or a token mean (a ``partial`` of a
    module-level function, so a ``PolicyLoss`` holding it still pickles)."""
    return partial(_sequence_rejected if per_sequence else _token_rejected, kept, batch)


def _sequence_rejected(kept: torch.Tensor, batch: PolicyBatch) -> Mean:
    return sequence_mean(~kept & batch.has_tokens, batch.has_tokens)


def _token_rejected(kept: torch.Tensor, batch: PolicyBatch) -> Mean:
    return token_mean(~kept & batch.on, batch.mask)
