"""Run upstream's ``openrlhf.cli.train_ppo_ray`` with this project installed.

Upstream builds its parser inside the module's ``__main__`` block, so the module is executed with
``runpy`` (never copied). While it runs (``run_state.active()``), three entries of the patch table
hook it (``runtime.launch_hooks``): right after upstream's ``parse_args``, ``finalize_args`` validates
our settings against the parsed arguments, resolves the one ``OffPolicyConfig``, writes
``--policy_loss_type`` into ``args.actor.policy_loss_type``, names the wandb run after the method and
puts the final settings on ``args`` (``args.offpolicy``); ``ray.init`` carries them to every worker;
``ray.is_initialized`` ends a ``--dry_run`` before Ray starts.
Before any of this, the installed openrlhf / vLLM versions are checked (``versions``), and a
missing GPU-only module (vLLM, flash-attn) is one line (``require_gpu_stack``).
``--dry_run`` executes only upstream's ``__main__`` block, with ``train`` replaced by a stop, read from
upstream's source (``upstream_source``): the same parsing and checks, without Ray, vLLM or DeepSpeed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import runpy
import secrets
import sys
from dataclasses import replace
from datetime import datetime
from typing import Iterable, List, Tuple

from . import upstream_source
from .checks import check_settings
from ..runtime import patches
from ..runtime.launch_hooks import StopBeforeRay
from ..runtime.sampling import with_rollout_sampling
from ..runtime.run_state import RunState, set_active
from ..runtime.settings import OffPolicySettings
from ..runtime.upstream_args import peek_upstream_args, vllm_enabled
from ..runtime.versions import check_versions

UPSTREAM_MODULE = "openrlhf.cli.train_ppo_ray"


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


def method_label(config) -> str:
    """The default wandb group: ``<policy loss>-<correction>``, then the band and every parameter of
    the selected methods that differs from its default (``ppo-trm-trm_avg_delta=0.002-trm_max_delta=none``),
    so runs of different settings never share a group (``run_group`` adds the advantage estimator)."""
    if config.correction_enabled:
        correction = config.correction
    elif config.anchor_on_rollout:
        correction = "rollout-anchor"
    else:
        correction = "no-correction"
    from ...corrections import CORRECTIONS, DIVERGENCES, POLICY_LOSSES
    from ...corrections.config import DEFAULT_THRESHOLD, same_value

    parts = [f"{config.policy_loss_type}-{correction}"]
    if config.correction_enabled and tuple(config.threshold) != tuple(DEFAULT_THRESHOLD):
        parts.append("band=" + ":".join(f"{v:g}" for v in config.threshold))
    selected = config.selected_methods
    for registry in (CORRECTIONS, POLICY_LOSSES, DIVERGENCES):
        for entry in registry:
            if entry.name not in selected:
                continue
            for p in entry.params:
                value = config.params[p.name]
                if not same_value(value, p.default):
                    parts.append(f"{p.name}={_short(value)}")
    if config.rejection:
        parts.append("rejection=" + ",".join(c.name for c in config.rejection))
    if config.is_batch_normalize:
        parts.append("batch_normalized")
    return "-".join(dict.fromkeys(parts))


def _short(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ":".join(_short(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


WANDB_GROUP_MAX = 128  # wandb's limit on a group name


def run_group(config, args, settings: OffPolicySettings) -> str:
    """The default wandb group: the method label, then the advantage estimator, the actor's learning
    rate and the policy model (``ppo-reinforce_pro-reinforce_max-lr=1e-06-Qwen2.5-Math-1.5B``): runs
    that differ in any of them never share a group, and runs that differ only in the seed do."""
    estimator = settings.advantage_estimator or args.algo.advantage.estimator
    model = os.path.basename(str(args.actor.model_name_or_path).rstrip("/")) or "model"
    group = f"{method_label(config)}-{estimator}-lr={_short(float(args.actor.adam.lr))}-{model}"
    if len(group) > WANDB_GROUP_MAX:
        digest = hashlib.sha1(group.encode()).hexdigest()[:8]
        group = group[:WANDB_GROUP_MAX - 9] + "~" + digest
    return group


def run_name(group: str, seed: int) -> str:
    """A unique run name: the group, the seed, the start time to the second and a random suffix."""
    return f"{group}_seed{seed}_{datetime.now().strftime('%m%dT%H%M%S')}_{secrets.token_hex(2)}"


def final_settings(args, settings: OffPolicySettings, explicit_flags: Iterable[str] = ()):
    """(config, the settings every process of the run gets) for upstream ``args``; ValueError if invalid."""
    settings = with_rollout_sampling(settings, args)
    settings = check_settings(settings, args, set(explicit_flags))
    config = settings.config()
    wants = settings.request_rollout_logprobs or config.reads_rollout_log_probs
    return config, replace(settings, request_rollout_logprobs=bool(wants and vllm_enabled(args)))


def finalize_args(args, settings: OffPolicySettings, explicit_flags: Iterable[str]):
    """Validate and complete upstream ``args`` in place; returns (config, final settings)."""
    explicit = set(explicit_flags)
    config, settings = final_settings(args, settings, explicit)
    if settings.policy_loss_type is not None:
        args.actor.policy_loss_type = settings.policy_loss_type
    group = run_group(config, args, settings)
    if "--logger.wandb.group" not in explicit:
        args.logger.wandb.group = group
    if "--logger.wandb.run_name" not in explicit:
        args.logger.wandb.run_name = run_name(args.logger.wandb.group, args.train.seed)
    args.offpolicy = settings
    return config, settings


# --------------------------------------------------------------------------- entry points
def run(
    upstream_argv: List[str],
    settings: OffPolicySettings,
    *,
    dry_run: bool = False,
    explicit_flags: Iterable[str] = (),
    prog: str = "train_ppo_ray",
) -> Tuple[object, object, OffPolicySettings]:
    """Execute upstream's ``__main__`` with our hooks; returns (args, config, settings).

    With ``dry_run`` only upstream's ``__main__`` block runs (read from its source, see
    ``upstream_source``): it parses and checks the arguments and stops where ``train`` would start
    Ray, so nothing GPU-only (vLLM, DeepSpeed, flash-attn) is imported. A real run undoes every
    patch when it returns.
    """
    check_versions()
    if dry_run:
        return _dry_run(upstream_argv, settings, explicit_flags, prog)
    if not settings.cpu_backend:
        require_gpu_stack()
    # Install with the settings upstream's parse will finalise to (read from the same argv), so the
    # re-install at parse time (launch_hooks.hierarchize) is a no-op: upstream's modules are imported
    # before it parses, and Ray captures a replaced method of a @ray.remote class then; a new replacement
    # would leave Ray holding one it cannot pickle by reference. If the two ever differ, the run
    # re-installs (correct settings) and an affected actor fails to export, loudly.
    settings = final_settings(peek_upstream_args(upstream_argv), settings, explicit_flags)[1]
    state = RunState(settings=settings, dry_run=dry_run, explicit_flags=set(explicit_flags),
                     finalize=functools.partial(finalize_args, settings=settings, explicit_flags=explicit_flags))
    set_active(state)
    try:
        patches.install(settings)  # upstream's CLI module binds create_vllm_engines when it is imported
        with swapped(sys, "argv", [prog, *upstream_argv]):
            runpy.run_module(UPSTREAM_MODULE, run_name="__main__", alter_sys=True)
    except StopBeforeRay:
        pass
    except AssertionError as e:
        if state.args is not None and not state.started:  # upstream's own checks, after parsing
            raise UpstreamCheckFailed(f"upstream train_ppo_ray rejected the arguments: {e}") from e
        raise
    finally:
        set_active(None)
        patches.undo()
    return state.args, state.config, state.final


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
    except StopBeforeRay:
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
    raise StopBeforeRay()
