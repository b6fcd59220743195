"""The settings checked against upstream's parsed arguments, and the run's ``OffPolicyConfig`` resolved
once, before Ray starts (``launch.finalize_args``; the CLI's own pre-flight check calls the same).

Every problem is a ``ValueError`` with a one-line reason; the CLI prints it and exits 2.
"""

from __future__ import annotations

from typing import Iterable

from ...corrections import resolve_config
from ..runtime.advantages import check_estimator
from ..runtime.sampling import check_sampling
from ..runtime.settings import OffPolicySettings
from ..runtime.upstream_args import loss_kwargs_from_args, vllm_enabled
from .async_settings import check_async_settings
from .routing_checks import check_routing_replay

MAX_LOGPROBS_TOPK = 20  # vLLM's default max_logprobs


def check_settings(settings: OffPolicySettings, args, explicit_flags: Iterable[str] = ()) -> OffPolicySettings:
    """``settings`` validated against upstream ``args`` and carrying the run's resolved configuration
    (``settings.config()``): ``resolve_config`` of upstream's ``PolicyLoss`` kwargs and our flags."""
    check_policy_loss_type(settings, args, explicit_flags)
    upstream_kwargs = loss_kwargs_from_args(args)
    if settings.policy_loss_type is not None:
        upstream_kwargs["policy_loss_type"] = settings.policy_loss_type
    config = resolve_config(**upstream_kwargs, **settings.loss_kwargs)
    check_estimator(settings, args)
    check_topk(settings.logprobs_topk, config, args)
    check_routing_replay(settings.routing_replay, args, settings.logprobs_topk, settings.bypass_old_logprobs)
    check_async_settings(settings, config, args)
    check_rollout_log_probs_available(config, args)
    check_sampling(settings, config, args)
    return settings.with_config(config, upstream_kwargs)


def check_policy_loss_type(settings: OffPolicySettings, args, explicit_flags: Iterable[str]) -> None:
    upstream_type = args.actor.policy_loss_type
    ours = settings.policy_loss_type
    if ours is not None and "--actor.policy_loss_type" in set(explicit_flags) and upstream_type != ours:
        raise ValueError(f"--policy_loss_type {ours} contradicts --actor.policy_loss_type {upstream_type}; "
                         "give one of them")


def check_rollout_log_probs_available(config, args) -> None:
    """A configuration that reads pi_roll needs vLLM engines: only they produce it."""
    if not config.needs_rollout_log_probs or vllm_enabled(args):
        return
    what = config.correction if config.correction_enabled else f"{config.policy_loss_type} with a correction"
    if config.rejection and not config.correction_enabled:
        what = "--rejection " + " ".join(c.name for c in config.rejection)
    raise ValueError(f"{what} needs the rollout log-probs pi_roll that only vLLM engines produce, "
                     "but vLLM is off (--vllm.num_engines is unset or 0)")


def check_topk(k: int, config, args) -> None:
    """``--vllm_logprobs_topk K``: within vLLM's limit, present when a selected divergence needs it, and
    only where the rollout can carry it."""
    if not 0 <= k <= MAX_LOGPROBS_TOPK:
        raise ValueError(f"--vllm_logprobs_topk must lie in 1..{MAX_LOGPROBS_TOPK} (vLLM's limit), got {k}")
    if config.needs_topk and not k:
        raise ValueError(f"{'/'.join(config.divergences)} needs the rollout's top-K log-probs: "
                         f"add --vllm_logprobs_topk K (1 <= K <= {MAX_LOGPROBS_TOPK})")
    if not k:
        return
    if not vllm_enabled(args):
        raise ValueError("--vllm_logprobs_topk needs vLLM engines, but vLLM is off (--vllm.num_engines)")
    if args.train.agent_func_path:
        raise ValueError("--vllm_logprobs_topk is not supported with --train.agent_func_path: multi-turn agent "
                         "rollouts carry no top-K log-probs")
    if args.ds.ring_attn_size > 1:
        raise ValueError("--vllm_logprobs_topk is not supported with ring attention (--ds.ring_attn_size > 1)")
