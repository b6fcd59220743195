"""Resolve ``PolicyLoss`` keyword arguments into one validated ``OffPolicyConfig``.

Three kinds of arguments are accepted (see docs/design.md, "Using the loss directly"):
  * upstream OpenRLHF 0.11.2: clip_eps_low/high, dual_clip, token_level_loss, policy_loss_type and
    the ``is_correction_{level,mode,gating,threshold}`` gate;
  * seed-style (the 0.9.x fork API): ``enable_vllm_is_correction``,
    ``vllm_is_truncated_threshold``, ``vllm_is_correction_type``;
  * method parameters, each declared by the method that reads it (``Param`` in its registration).

Both correction APIs may be given only if they mean the same correction. Every problem is a
``ValueError`` raised here, at construction, before any tensor is touched; the CLI calls the same
function so a bad flag fails before Ray starts.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, make_dataclass, replace
from functools import lru_cache
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

from .divergences import DIVERGENCES
from .gates import CORRECTIONS, NO_CORRECTION
from .losses import POLICY_LOSSES
from .registry import Param, float32_problem, shorten
from .rejection import Criterion, parse_rejection

DEFAULT_THRESHOLD = (0.5, 5.0)

# Upstream 0.11.2's (level, mode, gating) gate, expressed as the registered correction it equals.
UPSTREAM_GATES = {
    ("token", "clip", "ratio"): "tis",
    ("token", "mask", "ratio"): "icepop",
    ("seq", "mask", "ratio"): "seq-mask-tis",
    ("token", "mask", "binary_kl"): "binary-kl-mask",
    ("seq", "mask", "binary_kl"): "seq-binary-kl-mask",
    ("token", "mask", "tv"): "tv-mask",
    ("seq", "mask", "tv"): "seq-tv-mask",
}


# What each non-method argument of resolve_config means, written once: PolicyLoss's help and the CLI's
# flags of the same name read it (method parameters carry their own help in the registry).
ARGUMENT_HELP = {
    "clip_eps_low": "PPO clip: lower bound 1 - clip_eps_low on the ratio (losses with a PPO clip)",
    "clip_eps_high": "PPO clip: upper bound 1 + clip_eps_high (DAPO clip-higher)",
    "dual_clip": "dual-clip bound c > 1 for negative advantages, or None",
    "token_level_loss": "True: mean over all tokens; False: mean over sequences of the token mean",
    "policy_loss_type": "the policy loss",
    "is_correction_level": "upstream 0.11.2 correction gate: granularity (off disables it)",
    "is_correction_mode": "upstream gate: mask (drop) or clip (clamp) units out of the band",
    "is_correction_gating": "upstream gate: the statistic the band applies to",
    "is_correction_threshold": "upstream gate: [LOW, HIGH] band, or [HIGH] for an upper bound only",
    "enable_vllm_is_correction": "0.9.x fork API: turn on vllm_is_correction_type",
    "vllm_is_truncated_threshold": "0.9.x fork API: [LOW, HIGH] band of the correction statistic "
                                   "(a single value: [0, HIGH])",
    "vllm_is_correction_type": "0.9.x fork API: the mismatch correction (with enable_vllm_is_correction=True)",
    "rejection": "reject tokens/sequences by the mismatch, AND-combined with each other and the correction: "
                 "AGG_METRIC:HIGH or AGG_METRIC:LOW:HIGH (AGG token/seq_sum/seq_mean/seq_max, METRIC k1/k2/k3), "
                 "token_kpop:PHI, opsm:DELTA, veto:LOW (docs/design.md, 'Rejection criteria')",
    "is_batch_normalize": "rescale the correction's IS weights to mean 1 over the loss call",
}


def method_params() -> Dict[str, Param]:
    """Every method parameter declared by a registered correction, policy loss or divergence."""
    out: Dict[str, Param] = {}
    for registry in (CORRECTIONS, POLICY_LOSSES, DIVERGENCES):
        for entry in registry:
            for p in entry.params:
                if p.name in out and out[p.name] != p:
                    raise ValueError(f"method parameter {p.name!r} is declared twice, differently")
                out[p.name] = p
    return out


def method_owners() -> Dict[str, Tuple[Tuple[str, str], ...]]:
    """Method parameter -> the (registry kind, method name) of every method that reads it."""
    owners: Dict[str, Tuple[Tuple[str, str], ...]] = {}
    for registry in (CORRECTIONS, POLICY_LOSSES, DIVERGENCES):
        for entry in registry:
            for p in entry.params:
                owners[p.name] = owners.get(p.name, ()) + ((registry.kind, entry.name),)
    return owners


def same_value(a: Any, b: Any) -> bool:
    """Equal, with a list and a tuple of the same items equal (a parsed flag against a declared default)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def check_parameters_are_read(given: Mapping[str, Any], config: "OffPolicyConfig") -> None:
    """A method parameter set away from its default must be read by a selected method: a run would
    otherwise ignore it silently (``sapo_tau_pos`` with ``ppo``, ``trm_max_delta`` without ``trm``)."""
    declared, owners = method_params(), method_owners()
    selected = config.selected_methods
    for name in given:
        if same_value(config.param(name), declared[name].validate(declared[name].default)):
            continue
        if any(method in selected for _, method in owners[name]):
            continue
        users = " / ".join(f"{kind} {method}" for kind, method in owners[name])
        raise ValueError(
            f"{name} is read only by the {users}, which this configuration does not use (policy loss "
            f"{config.policy_loss_type}, correction {config.correction}); select it or drop {name}"
        )


def correction_choices() -> list:
    """Values accepted by ``vllm_is_correction_type`` / ``--vllm_is_correction_type``."""
    return CORRECTIONS.names(with_aliases=True, hidden=False)


class MethodParamsBase(Mapping):
    """Read-only mapping view of a ``MethodParams`` dataclass (``dict(cfg.params)`` works)."""

    def __getitem__(self, name: str) -> Any:
        if name not in self.__dataclass_fields__:
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)

    def __reduce__(self):  # the class is built at run time: pickle by value
        return (_rebuild_method_params, (dict(self),))


def _rebuild_method_params(values: Dict[str, Any]):
    return method_params_type()(**values)


def param_annotation(p: Param) -> Any:
    """The declared type of a parameter's value: its type, a tuple of them for ``nargs``, Optional if None
    is accepted."""
    value: Any = p.type if p.nargs is None else Tuple[(p.type,) * p.nargs]
    return Optional[value] if p.optional or p.default is None else value


@lru_cache(maxsize=None)
def _method_params_type(names: Tuple[str, ...]) -> type:
    declared = method_params()
    fields_ = [(n, param_annotation(declared[n])) for n in names]
    return make_dataclass("MethodParams", fields_, bases=(MethodParamsBase,), frozen=True)


def method_params_type() -> type:
    """The frozen dataclass with one typed field per registered method parameter."""
    return _method_params_type(tuple(method_params()))


def resolve_method_params(method_kwargs: Mapping[str, Any]):
    """Validate the method parameters (defaults for those not given) into a ``MethodParams``."""
    declared = method_params()
    unknown = sorted(set(method_kwargs) - set(declared))
    if unknown:
        raise ValueError(f"unknown PolicyLoss argument(s) {unknown}; method parameters are {sorted(declared)}")
    values = {name: p.validate(method_kwargs.get(name, p.default)) for name, p in declared.items()}
    return method_params_type()(**values)


@dataclass(frozen=True)
class OffPolicyConfig:
    """Everything a ``PolicyLoss`` needs, validated.

    Method parameters live in ``params``, a frozen dataclass with one typed field per registered
    parameter (``cfg.params.sapo_tau_pos``, or ``cfg.param("sapo_tau_pos")`` by name).
    """

    policy_loss_type: str = "ppo"
    correction: str = NO_CORRECTION
    threshold: Tuple[float, float] = DEFAULT_THRESHOLD
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    dual_clip: Optional[float] = None
    token_level_loss: bool = True
    anchor_on_rollout: bool = False
    params: MethodParamsBase = field(default_factory=lambda: resolve_method_params({}))
    rejection: Tuple[Criterion, ...] = ()  # composable rejection criteria (corrections.rejection)
    is_batch_normalize: bool = False  # rescale the correction's weights to mean 1 (corrections.normalize)
    # Set by resolve_config only: PolicyLoss(config=...) refuses a configuration built around its checks.
    validated: bool = field(default=False, compare=False, repr=False)

    def param(self, name: str) -> Any:
        """The value of method parameter ``name`` (AttributeError if no method declares it)."""
        params = self.params
        if name not in params:
            raise AttributeError(f"OffPolicyConfig has no field or method parameter {name!r}")
        return params[name]

    @property
    def loss_entry(self):
        return POLICY_LOSSES.get(self.policy_loss_type)

    @property
    def correction_entry(self):
        return CORRECTIONS.get(self.correction)

    @property
    def correction_enabled(self) -> bool:
        return self.correction != NO_CORRECTION

    @property
    def selected_methods(self) -> set:
        """The registered names this configuration uses: its correction, its loss and their divergences."""
        return {self.correction, self.policy_loss_type, *self.divergences}

    @property
    def divergences(self) -> Tuple[str, ...]:
        """Divergences the selected methods read (to check their data needs)."""
        names = []
        for entry in (self.correction_entry, self.loss_entry):
            if entry.divergence_param is not None:
                names.append(self.param(entry.divergence_param))
        return tuple(names)

    @property
    def needs_rollout_log_probs(self) -> bool:
        """pi_roll is required: the loss raises without it."""
        return self.correction_enabled or self.anchor_on_rollout or bool(self.rejection)

    @property
    def reads_rollout_log_probs(self) -> bool:
        """pi_roll is read when given (required, or used in place of pi_old like DPPO's mu)."""
        return self.needs_rollout_log_probs or self.loss_entry.reads_rollout

    @property
    def needs_topk(self) -> bool:
        return any(DIVERGENCES.get(d).needs_topk for d in self.divergences)

    @property
    def metric_names(self) -> Tuple[str, ...]:
        """The method-specific metrics the selected loss and correction log."""
        return tuple(self.loss_entry.metrics) + (self.correction_entry.metrics if self.correction_enabled else ())

    def to_dict(self) -> Dict[str, Any]:
        """This validated configuration as plain JSON values, to cross a process boundary
        (``from_dict(to_dict(c)) == c``); an unvalidated configuration is refused."""
        if not self.validated:
            raise ValueError("only a configuration returned by resolve_config can be serialised")
        out: Dict[str, Any] = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "validated"}
        out["threshold"] = list(self.threshold)
        out["params"] = dict(self.params)
        out["rejection"] = [asdict(c) for c in self.rejection]
        return _json_safe(out)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "OffPolicyConfig":
        """The configuration ``to_dict`` wrote, exactly (typed again: tuples, ``MethodParams``, criteria).

        It was validated where it was resolved (``resolve_config``, in the driver), so it is not
        validated again; a payload with fields this version does not declare is refused."""
        values = dict(values)
        unknown = set(values) - set(cls.__dataclass_fields__) | set(values.get("params", {})) - set(method_params())
        if unknown or "validated" in values:
            raise ValueError(f"not a serialised OffPolicyConfig of this version: unknown fields {sorted(unknown)}")
        declared = method_params()
        params = {name: _param_from_json(declared[name], v) for name, v in values.pop("params").items()}
        rejection = tuple(Criterion(**{**c, "low": _float(c["low"]), "high": _float(c["high"])})
                          for c in values["rejection"])
        return cls(**{**values, "threshold": tuple(_float(v) for v in values["threshold"]),
                      "params": method_params_type()(**params), "rejection": rejection, "validated": True})

    def describe(self) -> Dict[str, Any]:
        """A flat, printable view (for ``--dry_run`` and run names)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "params"}
        out["rejection"] = [c.name for c in self.rejection]
        out.update(dict(self.params))
        return out


def _json_safe(value: Any) -> Any:
    """Plain JSON values: tuples become lists, an infinite float its name ("inf" / "-inf"; JSON has none)."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def _float(value: Any) -> Any:
    """A float ``_json_safe`` wrote (an infinity arrives as its name)."""
    return float(value) if value in ("inf", "-inf") else value


def _param_from_json(param: Param, value: Any) -> Any:
    if value is None or param.type is not float:
        return tuple(value) if param.nargs and value is not None else value
    return tuple(_float(v) for v in value) if param.nargs else _float(value)


def finite_float(value: Any, name: str) -> float:
    """``float(value)`` if it is a real number (not a bool or a string) that is finite, float32-representable
    and not denormal, else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {shorten(value)}")
    number = float(value)
    problem = float32_problem(number)
    if problem:
        raise ValueError(f"{name}={shorten(value)}: {problem}")
    return number


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is a bool (numpy's included), else ValueError: ``"false"`` or a tensor is not a switch."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise ValueError(f"{name} must be True or False, got {shorten(value)}")


def check_name(value: Any, name: str) -> str:
    """``value`` if it is a string, else ValueError (``["ppo"]`` is not a name)."""
    if isinstance(value, str):
        return value
    raise ValueError(f"{name} must be a string, got {shorten(value)}")


def _threshold(value: Optional[Sequence[float]], name: str) -> Tuple[float, float]:
    if value is None:
        return DEFAULT_THRESHOLD
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be LOW HIGH (or a single HIGH), got {shorten(value)}")
    values = [finite_float(v, name) for v in value]
    if len(values) == 1:  # a single value is an upper bound only (upstream 0.11.2 CLI semantics)
        values.insert(0, 0.0)
    if len(values) != 2:
        raise ValueError(f"{name} must be LOW HIGH (or a single HIGH), got {shorten(value)}")
    return values[0], values[1]


def upstream_correction(level: str, mode: str, gating: str) -> Optional[str]:
    """The correction upstream 0.11.2's ``is_correction_*`` kwargs select (None when off)."""
    level = check_name(level, "is_correction_level")
    mode = check_name(mode, "is_correction_mode")
    gating = check_name(gating, "is_correction_gating")
    if level not in {"off", "token", "seq"}:
        raise ValueError(f"is_correction_level must be off/token/seq, got {shorten(level)}")
    if mode not in {"mask", "clip"}:
        raise ValueError(f"is_correction_mode must be mask/clip, got {shorten(mode)}")
    if gating not in {"ratio", "binary_kl", "tv"}:
        raise ValueError(f"is_correction_gating must be ratio/binary_kl/tv, got {shorten(gating)}")
    if mode == "clip" and (level == "seq" or gating != "ratio"):
        raise ValueError("is_correction_mode=clip requires is_correction_level=token and is_correction_gating=ratio")
    if level == "off":
        return None
    return UPSTREAM_GATES[(level, mode, gating)]


def check_threshold(correction: str, threshold: Tuple[float, float]) -> None:
    kind = CORRECTIONS.get(correction).threshold
    low, high = threshold
    if kind == "ratio":
        if not (0.0 <= low <= 1.0 <= high and low < high):
            raise ValueError(
                f"correction {correction!r} reads [low, high] as a ratio band and needs 0 <= low <= 1 <= high "
                f"with low < high; got [{low}, {high}]"
            )
    elif kind == "divergence":
        if low != 0.0 or not high > 0.0:
            raise ValueError(
                f"correction {correction!r} gates a divergence and takes an upper bound only (a single delta > 0, "
                f"i.e. threshold [0, delta]); got [{low}, {high}]"
            )


def check_not_inverted(**bands: Any) -> None:
    """A band with LOW > HIGH is an error whether or not its correction is on (a typo stays one)."""
    for name, band in bands.items():
        if isinstance(band, (list, tuple)) and len(band) == 2 and all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) for v in band) and band[0] > band[1]:
            raise ValueError(f"{name} {band[0]:g} {band[1]:g} is inverted: LOW must not exceed HIGH")


def resolve_correction(
    *,
    is_correction_level: str = "off",
    is_correction_mode: str = "mask",
    is_correction_gating: str = "ratio",
    is_correction_threshold: Optional[Sequence[float]] = DEFAULT_THRESHOLD,
    enable_vllm_is_correction: bool = False,
    vllm_is_truncated_threshold: Optional[Sequence[float]] = DEFAULT_THRESHOLD,
    vllm_is_correction_type: str = "tis",
) -> Tuple[str, Tuple[float, float]]:
    """The (registered correction, threshold) both correction APIs select; they must agree."""
    check_not_inverted(vllm_is_truncated_threshold=vllm_is_truncated_threshold,
                       is_correction_threshold=is_correction_threshold)
    if vllm_is_correction_type != "tis" and enable_vllm_is_correction is False:
        raise ValueError(f"vllm_is_correction_type {shorten(vllm_is_correction_type)} has no effect without "
                         "enable_vllm_is_correction=True")
    upstream = upstream_correction(is_correction_level, is_correction_mode, is_correction_gating)
    upstream_choice = None
    if upstream is not None:
        upstream_choice = (upstream, _threshold(is_correction_threshold, "is_correction_threshold"))
    seed_choice = None
    vllm_is_correction_type = check_name(vllm_is_correction_type, "vllm_is_correction_type")
    if check_bool(enable_vllm_is_correction, "enable_vllm_is_correction"):
        if vllm_is_correction_type not in correction_choices():
            raise ValueError(
                f"unknown vllm_is_correction_type {shorten(vllm_is_correction_type)}; "
                f"choose from {correction_choices()}"
            )
        seed_choice = (
            CORRECTIONS.canonical(vllm_is_correction_type),
            _threshold(vllm_is_truncated_threshold, "vllm_is_truncated_threshold"),
        )
    if upstream_choice and seed_choice and upstream_choice != seed_choice:
        raise ValueError(
            "conflicting correction settings: is_correction_level/mode/gating/threshold select "
            f"{upstream_choice[0]!r} {list(upstream_choice[1])} but enable_vllm_is_correction/"
            f"vllm_is_correction_type/vllm_is_truncated_threshold select {seed_choice[0]!r} {list(seed_choice[1])}; "
            "keep one of the two (upstream's is_correction_* or the enable_vllm_is_correction family)"
        )
    correction, threshold = seed_choice or upstream_choice or (NO_CORRECTION, DEFAULT_THRESHOLD)
    if correction != NO_CORRECTION:
        check_threshold(correction, threshold)
    return correction, threshold


def combine_loss_and_correction(loss, correction: str) -> Tuple[str, bool]:
    """(correction, anchor_on_rollout) once the loss's own relation to pi_roll is taken into account."""
    if correction == NO_CORRECTION:
        return correction, False
    if not loss.accepts_correction:
        raise ValueError(
            f"policy_loss_type={loss.name!r} already anchors its importance weight on the rollout policy mu; "
            f"combining it with the vllm_is correction {correction!r} applies the mismatch twice. "
            "Disable the correction."
        )
    if loss.anchors_on_rollout:
        if not CORRECTIONS.get(correction).legacy:
            raise ValueError(
                f"policy_loss_type={loss.name!r} (upstream semantics) measures its sequence ratio against "
                f"pi_roll and applies no coefficient, so {correction!r} would be ignored; "
                "use policy_loss_type='gspo_token' to combine a sequence-level ratio with this correction"
            )
        return NO_CORRECTION, True
    return correction, False


def check_clip(clip_eps_low: float, clip_eps_high: float,
               dual_clip: Optional[float]) -> Tuple[float, float, Optional[float]]:
    clip_eps_low = finite_float(clip_eps_low, "clip_eps_low")
    clip_eps_high = finite_float(clip_eps_high, "clip_eps_high")
    if dual_clip is not None:
        dual_clip = finite_float(dual_clip, "dual_clip")
        if not dual_clip > 1.0:
            raise ValueError(f"dual_clip must be > 1.0, got {dual_clip}")
    if not 0.0 <= clip_eps_low < 1.0 or not clip_eps_high >= 0.0:
        raise ValueError(f"need 0 <= clip_eps_low < 1 and clip_eps_high >= 0, got {clip_eps_low}, {clip_eps_high}")
    return clip_eps_low, clip_eps_high, dual_clip


def resolve_config(
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    dual_clip: Optional[float] = None,
    token_level_loss: bool = True,
    policy_loss_type: str = "ppo",
    is_correction_level: str = "off",
    is_correction_mode: str = "mask",
    is_correction_gating: str = "ratio",
    is_correction_threshold: Optional[Sequence[float]] = DEFAULT_THRESHOLD,
    *,
    enable_vllm_is_correction: bool = False,
    vllm_is_truncated_threshold: Optional[Sequence[float]] = DEFAULT_THRESHOLD,
    vllm_is_correction_type: str = "tis",
    rejection: Optional[Sequence[str]] = None,
    is_batch_normalize: bool = False,
    **method_kwargs: Any,
) -> OffPolicyConfig:
    """Validate every argument and return the resolved configuration (ValueError on bad input).

    The one place the ``PolicyLoss`` keyword signature is written: the first nine arguments are
    upstream OpenRLHF 0.11.2's ``PolicyLoss``'s, in its order; ``PolicyLoss`` takes this signature."""
    params = resolve_method_params(method_kwargs)
    loss = POLICY_LOSSES.get(check_name(policy_loss_type, "policy_loss_type"))
    token_level_loss = check_bool(token_level_loss, "token_level_loss")
    is_batch_normalize = check_bool(is_batch_normalize, "is_batch_normalize")
    clip_eps_low, clip_eps_high, dual_clip = check_clip(clip_eps_low, clip_eps_high, dual_clip)
    correction, threshold = resolve_correction(
        is_correction_level=is_correction_level,
        is_correction_mode=is_correction_mode,
        is_correction_gating=is_correction_gating,
        is_correction_threshold=is_correction_threshold,
        enable_vllm_is_correction=enable_vllm_is_correction,
        vllm_is_truncated_threshold=vllm_is_truncated_threshold,
        vllm_is_correction_type=vllm_is_correction_type,
    )
    correction, anchor_on_rollout = combine_loss_and_correction(loss, correction)
    criteria = parse_rejection(rejection)
    if is_batch_normalize and correction == NO_CORRECTION:
        raise ValueError("is_batch_normalize rescales a correction's IS weights, but no correction is selected "
                         "(enable_vllm_is_correction / is_correction_level)")
    config = OffPolicyConfig(
        policy_loss_type=loss.name,
        correction=correction,
        threshold=threshold,
        clip_eps_low=clip_eps_low,
        clip_eps_high=clip_eps_high,
        dual_clip=dual_clip,
        token_level_loss=token_level_loss and not loss.sequence_level,
        anchor_on_rollout=anchor_on_rollout,
        params=params,
        rejection=criteria,
        is_batch_normalize=is_batch_normalize,
    )
    check_parameters_are_read(method_kwargs, config)
    for entry in (config.correction_entry, config.loss_entry):
        if getattr(entry, "validate", None) is not None:
            entry.validate(config)
    return replace(config, validated=True)
