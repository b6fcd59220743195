"""Run upstream's ``openrlhf.cli.train_ppo_ray`` with this project installed.

Upstream builds its parser inside the module's ``__main__`` block, so the module is executed with
``runpy`` (never copied). Three hooks are set around that execution:
  * ``openrlhf.utils.config.hierarchize`` (called right after upstream's ``parse_args``) is wrapped
    to validate our settings against the parsed arguments, write ``--policy_loss_type`` into
    ``args.actor.policy_loss_type``, name the wandb run after the method, and put the settings on
    ``args`` (``args.offpolicy``);
  * ``ray.init`` is wrapped to add the settings and our ``worker_process_setup_hook`` to the job's
    runtime env, so every Ray worker installs the patches when it starts;
  * ``ray.is_initialized`` (the first thing upstream's ``train`` calls) marks where upstream's own
    argument checks end.
``--dry_run`` executes only upstream's ``__main__`` block, with ``train`` replaced by a stop, read from
upstream's source (``upstream_source``): the same parsing and checks, without Ray, vLLM or DeepSpeed.
"""

from __future__ import annotations

import contextlib
import runpy
import sys
from dataclasses import replace
from datetime import datetime
from typing import Iterable, List, Optional, Tuple

from ..corrections import CORRECTIONS, DIVERGENCES, POLICY_LOSSES, OffPolicyConfig
from ..corrections.config import DEFAULT_THRESHOLD
from . import patches, upstream_source
from .settings import ENV_VAR, OffPolicySettings
from .upstream_args import vllm_enabled

UPSTREAM_MODULE = "openrlhf.cli.train_ppo_ray"
WORKER_SETUP_HOOK = "openrlhf_offpolicy.integration.worker.setup"


class _StopBeforeRay(Exception):
    """Raised where upstream would start Ray, to end a dry run."""


class UpstreamCheckFailed(ValueError):
    """One of upstream's own argument assertions failed (before Ray started)."""


@contextlib.contextmanager
def swapped(owner, name: str, value):
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield original
    finally:
        setattr(owner, name, original)


def runtime_env_with_settings(runtime_env: Optional[dict], settings: OffPolicySettings) -> dict:
    """``runtime_env`` plus our settings variable and worker setup hook."""
    env = dict(runtime_env or {})
    hook = env.get("worker_process_setup_hook")
    if hook not in (None, WORKER_SETUP_HOOK):
        raise ValueError(f"the runtime env already has worker_process_setup_hook={hook!r}; "
                         f"openrlhf_offpolicy needs {WORKER_SETUP_HOOK!r}")
    env["env_vars"] = {**(env.get("env_vars") or {}), ENV_VAR: settings.to_json()}
    env["worker_process_setup_hook"] = WORKER_SETUP_HOOK
    return env


def method_label(config: OffPolicyConfig) -> str:
    """The default wandb group: ``<policy loss>-<correction>``, then the band and every parameter of
    the selected methods that differs from its default (``ppo-trm-trm_avg_delta=0.002-trm_max_delta=none``),
    so runs of different settings never share a group."""
    if config.correction_enabled:
        correction = config.correction
    elif config.anchor_on_rollout:
        correction = "rollout-anchor"
    else:
        correction = "no-correction"
    parts = [f"{config.policy_loss_type}-{correction}"]
    if config.correction_enabled and tuple(config.threshold) != tuple(DEFAULT_THRESHOLD):
        parts.append("band=" + ":".join(f"{v:g}" for v in config.threshold))
    selected = {config.correction, config.policy_loss_type, *config.divergences}
    for registry in (CORRECTIONS, POLICY_LOSSES, DIVERGENCES):
        for entry in registry:
            if entry.name not in selected:
                continue
            for p in entry.params:
                value = config.params[p.name]
                if not _same(value, p.default):
                    parts.append(f"{p.name}={_short(value)}")
    return "-".join(dict.fromkeys(parts))


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _short(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ":".join(_short(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def finalize_args(args, settings: OffPolicySettings, explicit_flags: Iterable[str]):
    """Validate and complete upstream ``args`` in place; returns (config, final settings)."""
    explicit = set(explicit_flags)
    config = settings.check(args, explicit)
    if settings.policy_loss_type is not None:
        args.actor.policy_loss_type = settings.policy_loss_type
    wants = settings.request_rollout_logprobs or config.reads_rollout_log_probs
    settings = replace(settings, request_rollout_logprobs=bool(wants and vllm_enabled(args)))
    label = method_label(config)
    if "--logger.wandb.group" not in explicit:
        args.logger.wandb.group = label
    if "--logger.wandb.run_name" not in explicit:
        args.logger.wandb.run_name = f"{label}_{datetime.now().strftime('%m%dT%H:%M')}"
    args.offpolicy = settings
    return config, settings


def run(
    upstream_argv: List[str],
    settings: OffPolicySettings,
    *,
    dry_run: bool = False,
    explicit_flags: Iterable[str] = (),
    prog: str = "train_ppo_ray",
) -> Tuple[object, OffPolicyConfig, OffPolicySettings]:
    """Execute upstream's ``__main__`` with our hooks; returns (args, config, settings).

    With ``dry_run`` only upstream's ``__main__`` block runs (read from its source, see
    ``upstream_source``): it parses and checks the arguments and stops where ``train`` would start
    Ray, so nothing GPU-only (vLLM, DeepSpeed, flash-attn) is imported.
    """
    if dry_run:
        return _dry_run(upstream_argv, settings, explicit_flags, prog)
    require_gpu_stack()
    import openrlhf.utils.config as upstream_config
    import ray

    state = {}

    def hierarchize(flat):
        args = original_hierarchize(flat)
        state["config"], state["settings"] = finalize_args(args, settings, explicit_flags)
        state["args"] = args
        patches.apply(state["settings"])
        state["trap"] = swapped(ray, "is_initialized", _mark_started)
        state["trap"].__enter__()
        return args

    def _mark_started():
        state["started"] = True
        state["trap"].__exit__(None, None, None)
        return ray.is_initialized()

    def init_with_settings(*args, runtime_env=None, **kwargs):
        return original_init(*args, runtime_env=runtime_env_with_settings(runtime_env, state["settings"]), **kwargs)

    with contextlib.ExitStack() as stack:
        original_hierarchize = stack.enter_context(swapped(upstream_config, "hierarchize", hierarchize))
        stack.enter_context(swapped(sys, "argv", [prog, *upstream_argv]))
        original_init = stack.enter_context(swapped(ray, "init", init_with_settings))
        # The driver: upstream's module binds create_vllm_engines when it is imported.
        patches.apply(settings)
        try:
            runpy.run_module(UPSTREAM_MODULE, run_name="__main__", alter_sys=True)
        except AssertionError as e:
            if "args" in state and "started" not in state:  # upstream's own checks, after parsing
                raise UpstreamCheckFailed(f"upstream train_ppo_ray rejected the arguments: {e}") from e
            raise
        finally:
            if "trap" in state and "started" not in state:
                state["trap"].__exit__(None, None, None)
    return state["args"], state["config"], state["settings"]


def _dry_run(upstream_argv, settings, explicit_flags, prog):
    original_hierarchize = upstream_source.upstream_hierarchize()
    state = {}

    def hierarchize(flat):
        args = original_hierarchize(flat)
        state["config"], state["settings"] = finalize_args(args, settings, explicit_flags)
        state["args"] = args
        return args

    try:
        upstream_source.run_main_block(upstream_argv, hierarchize=hierarchize, train=_stop_before_ray, prog=prog)
    except _StopBeforeRay:
        pass
    except AssertionError as e:
        if "args" not in state:
            raise
        raise UpstreamCheckFailed(f"upstream train_ppo_ray rejected the arguments: {e}") from e
    return state["args"], state["config"], state["settings"]


# Modules a real run imports that only a GPU machine has, and how to get them.
GPU_STACK = {
    "flash_attn": "pip install flash-attn==2.8.3 --no-build-isolation (needs CUDA; see dockerfile/Dockerfile)",
    "vllm": "pip install vllm==0.29.0 (or `pip install openrlhf[vllm]==0.11.2`)",
}


class MissingDependency(RuntimeError):
    """A module a real run needs is not installed (one-line message)."""


def require_gpu_stack() -> None:
    """A real run needs upstream, vLLM and flash-attn; name the first one missing and how to install it."""
    import importlib.util

    upstream_source.source_path()  # UpstreamMissing with the install hint
    for module, how in GPU_STACK.items():
        if importlib.util.find_spec(module) is None:
            raise MissingDependency(f"a real run needs {module}, which is not installed: {how}; "
                                    "--dry_run and --help work without it")


def _stop_before_ray(*_):
    raise _StopBeforeRay()
