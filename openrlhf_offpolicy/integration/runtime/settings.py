"""``OffPolicySettings``: what the CLI hands to every process of a run. A plain value.

It travels as JSON in the environment variable ``OPENRLHF_OFFPOLICY_SETTINGS`` of the job's
runtime env, read by the ``worker_process_setup_hook`` (``worker.setup``) when a Ray worker process
starts. This module imports only the standard library, so the hook stays light; the run's typed
``OffPolicyConfig`` travels as its own exact serialisation (``OffPolicyConfig.to_dict``) and is typed
again (``config()``) only where a ``PolicyLoss`` is built. Pickling a settings object has no side effect.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any, Dict, Optional

ENV_VAR = "OPENRLHF_OFFPOLICY_SETTINGS"


def _as_json_value(value: Any) -> Any:
    """``value`` as JSON will give it back: tuples (nested too) become lists."""
    if isinstance(value, (list, tuple)):
        return [_as_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _as_json_value(v) for k, v in value.items()}
    return value


@lru_cache(maxsize=8)
def _decoded(payload: str):
    from ...corrections.config import OffPolicyConfig  # torch: only where a PolicyLoss is built

    return OffPolicyConfig.from_dict(json.loads(payload))


@dataclass(frozen=True)
class OffPolicySettings:
    """Our flags, as the patched processes need them.

    loss_kwargs:               what the CLI asked of ``PolicyLoss``: seed-style correction kwargs and method
                               parameters. Read by the driver only, which resolves them once with
                               upstream's kwargs into ``loss_config``.
    loss_config:               the run's ``OffPolicyConfig`` (``OffPolicyConfig.to_dict``), validated once by
                               the driver; every ``PolicyLoss`` upstream builds is ``PolicyLoss(config=config())``.
    resolved_from:             upstream's ``PolicyLoss`` kwargs it was resolved with (``config_for`` checks them).
    policy_loss_type:          ``--policy_loss_type`` (None: keep upstream's ``--actor.policy_loss_type``).
    request_rollout_logprobs:  ask vLLM for the sampled token's log-prob (pi_roll).
    logprobs_topk:             ask vLLM for the top-K log-probs of every generated token (0: off).
    advantage_estimator:       our estimator replacing upstream's (``reinforce_max``), None: upstream's.
    uniform_scale:             reinforce_max: a group with equal rewards gets r/n instead of 0.
    match_rollout_sampling:    ``--match_rollout_sampling``: the trainer's old and current log-probs
                               use the rollout's top-k / top-p / min-p truncation (see ``sampling``).
    rollout_top_k, rollout_top_p, rollout_min_p:
                               the rollout's truncation, as upstream passes it to vLLM.
    routing_replay:            MoE routing replay: "off", "r2" (training routing) or "r3" (rollout routing).
    max_staleness:             drop samples more than this many policy updates old (None: keep all).
    bypass_old_logprobs:       use the rollout log-probs as pi_old; skip the actor's old-log-prob forward.
    vllm_dtype:                ``--vllm_dtype`` as given (auto/bfloat16/float16).
    engine_dtype:              the dtype the vLLM engines are created with (resolved; None: upstream's).
    cpu_backend:               run upstream's loop on the CPU (``--smoke_test``; see ``cpu_backend``).
    smoke_mismatch, smoke_mismatch_scale:
                               the CPU stand-in engine's mismatch against the trainer (``standin_engine``).
    """

    loss_kwargs: Dict[str, Any] = field(default_factory=dict)
    loss_config: Optional[Dict[str, Any]] = None
    resolved_from: Optional[Dict[str, Any]] = None
    policy_loss_type: Optional[str] = None
    request_rollout_logprobs: bool = True
    logprobs_topk: int = 0
    advantage_estimator: Optional[str] = None
    uniform_scale: bool = False
    match_rollout_sampling: bool = False
    rollout_top_k: int = -1
    rollout_top_p: float = 1.0
    rollout_min_p: float = 0.0
    routing_replay: str = "off"
    max_staleness: Optional[int] = None  # async off-policy training
    bypass_old_logprobs: bool = False
    vllm_dtype: str = "auto"
    engine_dtype: Optional[str] = None
    cpu_backend: bool = False
    smoke_mismatch: str = "bf16"
    smoke_mismatch_scale: Optional[float] = None

    def __post_init__(self) -> None:
        # JSON has no tuples: sequences are kept as lists, so ``from_json(to_json(s)) == s`` exactly.
        object.__setattr__(self, "loss_kwargs", {str(k): _as_json_value(v) for k, v in dict(self.loss_kwargs).items()})
        for name in ("loss_config", "resolved_from"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _as_json_value(getattr(self, name)))

    @property
    def needs_version_lag(self) -> bool:
        """The loss reads each sample's policy-version lag (``--a3po_alpha versions``)."""
        return (self.loss_config or {}).get("params", {}).get("a3po_alpha") == "versions"

    def with_config(self, config, upstream_kwargs: Dict[str, Any]) -> "OffPolicySettings":
        """These settings carrying ``config`` (an ``OffPolicyConfig`` from ``resolve_config``), resolved
        with upstream's ``PolicyLoss`` kwargs ``upstream_kwargs`` (``driver.checks.check_settings``)."""
        return replace(self, loss_config=config.to_dict(), resolved_from=_as_json_value(dict(upstream_kwargs)))

    def config(self):
        """The run's ``OffPolicyConfig``, typed again from ``loss_config`` (decoded once per process)."""
        if self.loss_config is None:
            raise RuntimeError("these settings carry no resolved OffPolicyConfig: the driver resolves it "
                               "(driver.checks.check_settings) before Ray starts")
        return _decoded(json.dumps(self.loss_config, sort_keys=True))

    def config_for(self, upstream_kwargs: Dict[str, Any]):
        """``config()``, for a ``PolicyLoss`` upstream builds with ``upstream_kwargs``: they must be the
        kwargs the configuration was resolved with, or clip, aggregation or the correction could differ
        silently from what the driver validated."""
        given = _as_json_value(dict(upstream_kwargs))
        if given != self.resolved_from:
            raise RuntimeError(f"upstream builds PolicyLoss with {given}, but the run's configuration was resolved "
                               f"with {self.resolved_from}")
        return self.config()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, payload: str) -> "OffPolicySettings":
        return cls(**json.loads(payload))
