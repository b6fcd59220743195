"""``OffPolicySettings``: what the CLI hands to every process of a run. A plain value.

It travels as JSON in the environment variable ``OPENRLHF_OFFPOLICY_SETTINGS`` of the job's
runtime env, read by the ``worker_process_setup_hook`` (``worker.setup``) when a Ray worker process
starts. This module imports only the standard library (and ``upstream_args``, which does too), so
the hook stays light; pickling and unpickling a settings object has no side effect.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, Optional

from .upstream_args import loss_kwargs_from_args, vllm_enabled

ENV_VAR = "OPENRLHF_OFFPOLICY_SETTINGS"


def _as_json_value(value: Any) -> Any:
    """``value`` as JSON will give it back: tuples (nested too) become lists."""
    if isinstance(value, (list, tuple)):
        return [_as_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _as_json_value(v) for k, v in value.items()}
    return value
MAX_LOGPROBS_TOPK = 20  # vLLM's default max_logprobs


@dataclass(frozen=True)
class OffPolicySettings:
    """Our flags, as the patched processes need them.

    loss_kwargs:               seed-style correction kwargs and method parameters, passed to every
                               ``PolicyLoss`` upstream's trainer builds (next to upstream's kwargs).
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

    @property
    def needs_version_lag(self) -> bool:
        """The loss reads each sample's policy-version lag (``--a3po_alpha versions``)."""
        return self.loss_kwargs.get("a3po_alpha") == "versions"

    def loss_config(self, args):
        """Resolve (and validate) the ``PolicyLoss`` configuration for upstream ``args``."""
        from ..corrections import resolve_config

        kwargs = loss_kwargs_from_args(args)
        if self.policy_loss_type is not None:
            kwargs["policy_loss_type"] = self.policy_loss_type
        return resolve_config(**kwargs, **self.loss_kwargs)

    def check(self, args, explicit_flags: Iterable[str] = ()):
        """Validate the settings against upstream ``args``; ValueError with a one-line reason."""
        upstream_type = args.actor.policy_loss_type
        if (
            self.policy_loss_type is not None
            and "--actor.policy_loss_type" in set(explicit_flags)
            and upstream_type != self.policy_loss_type
        ):
            raise ValueError(
                f"--policy_loss_type {self.policy_loss_type} contradicts --actor.policy_loss_type {upstream_type}; "
                "give one of them"
            )
        config = self.loss_config(args)
        from .advantages import check_estimator

        check_estimator(self, args)
        self._check_topk(config, args)
        from .routing_checks import check_routing_replay

        check_routing_replay(self.routing_replay, args, self.logprobs_topk, self.bypass_old_logprobs)
        from .async_settings import check_async_settings

        check_async_settings(self, config, args)
        if config.needs_rollout_log_probs and not vllm_enabled(args):
            what = config.correction if config.correction_enabled else f"{config.policy_loss_type} with a correction"
            if config.rejection and not config.correction_enabled:
                what = "--rejection " + " ".join(c.name for c in config.rejection)
            raise ValueError(
                f"{what} needs the rollout log-probs pi_roll that only vLLM engines produce, "
                "but vLLM is off (--vllm.num_engines is unset or 0)"
            )
        from .sampling import check_sampling

        check_sampling(self, config, args)
        return config

    def _check_topk(self, config, args) -> None:
        k = self.logprobs_topk
        if not 0 <= k <= MAX_LOGPROBS_TOPK:
            raise ValueError(f"--vllm_logprobs_topk must lie in 1..{MAX_LOGPROBS_TOPK} (vLLM's limit), got {k}")
        if config.needs_topk and not k:
            raise ValueError(f"{'/'.join(config.divergences)} needs the rollout's top-K log-probs: "
                             "add --vllm_logprobs_topk K (1 <= K <= 20)")
        if not k:
            return
        if not vllm_enabled(args):
            raise ValueError("--vllm_logprobs_topk needs vLLM engines, but vLLM is off (--vllm.num_engines)")
        if args.train.agent_func_path:
            raise ValueError("--vllm_logprobs_topk is not supported with --train.agent_func_path: multi-turn agent "
                             "rollouts carry no top-K log-probs")
        if args.ds.ring_attn_size > 1:
            raise ValueError("--vllm_logprobs_topk is not supported with ring attention (--ds.ring_attn_size > 1)")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, payload: str) -> "OffPolicySettings":
        return cls(**json.loads(payload))
