"""Run upstream's ``openrlhf.cli.train_ppo_ray`` with this project installed.

Upstream builds its parser inside the module's ``__main__`` block, so the module is executed with
``runpy`` (never copied). While it runs (``active()``), three entries of the patch table hook it:
  * ``openrlhf.utils.config.hierarchize`` (called right after upstream's ``parse_args``) validates
    our settings against the parsed arguments, writes ``--policy_loss_type`` into
    ``args.actor.policy_loss_type``, names the wandb run after the method, puts the settings on
    ``args`` (``args.offpolicy``) and re-installs the patches with the final settings;
  * ``ray.init`` adds the settings and our ``worker_process_setup_hook`` to the job's runtime env,
    so every Ray worker installs the patches when it starts; a setup hook the job already had
    (``ray job submit --runtime-env-json``) is moved behind ours (``worker.USER_HOOK_ENV_VAR``);
  * ``ray.is_initialized`` (the first thing upstream's ``train`` calls) ends a ``--dry_run`` after
    all of upstream's own argument checks, before Ray starts, and refuses a Ray that was started
    before (its workers would not have our settings).
Before any of this, the installed openrlhf / vLLM versions are checked (``versions``), and a
missing GPU-only module (vLLM, flash-attn) is one line (``require_gpu_stack``).
``--dry_run`` executes only upstream's ``__main__`` block, with ``train`` replaced by a stop, read from
upstream's source (``upstream_source``): the same parsing and checks, without Ray, vLLM or DeepSpeed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import runpy
import secrets
import sys
from dataclasses import replace
from datetime import datetime
from typing import Iterable, List, Optional, Tuple

from . import patches, upstream_source
from .sampling import with_rollout_sampling
from .run_state import RunState, active, set_active
from .settings import ENV_VAR, OffPolicySettings
from .upstream_args import vllm_enabled
from .versions import check_versions
from .worker import USER_HOOK_ENV_VAR

UPSTREAM_MODULE = "openrlhf.cli.train_ppo_ray"
WORKER_SETUP_HOOK = "openrlhf_offpolicy.integration.worker.setup"
JOB_CONFIG_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the job's driver
RAY_SETUP_HOOK_ENV_VAR = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"  # Ray's own record of a setup hook


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


def user_setup_hook(runtime_env: Optional[dict]) -> Optional[str]:
    """The job's own worker_process_setup_hook (a 'module.function' string), if any."""
    hook = (runtime_env or {}).get("worker_process_setup_hook")
    if hook in (None, WORKER_SETUP_HOOK):
        return None
    if not isinstance(hook, str) or hook.startswith("ray_runtime_env_func::"):
        raise ValueError(f"the job's worker_process_setup_hook {hook!r} must be given as 'module.function' to be "
                         f"chained after openrlhf_offpolicy's ({WORKER_SETUP_HOOK})")
    return hook


def runtime_env_with_settings(runtime_env: Optional[dict], settings: OffPolicySettings,
                              user_hook: Optional[str] = None) -> dict:
    """``runtime_env`` plus our settings variable and worker setup hook (the user's chained after)."""
    env = dict(runtime_env or {})
    user_hook = user_setup_hook(env) or user_hook
    env_vars = {k: v for k, v in (env.get("env_vars") or {}).items() if k != RAY_SETUP_HOOK_ENV_VAR}
    env_vars[ENV_VAR] = settings.to_json()
    if user_hook:
        env_vars[USER_HOOK_ENV_VAR] = user_hook
    env["env_vars"] = env_vars
    env["worker_process_setup_hook"] = WORKER_SETUP_HOOK
    return env


def take_job_setup_hook() -> Optional[str]:
    """Remove the setup hook from the job-level runtime env Ray will merge with ours; return it.

    Ray refuses to merge two hooks ("Failed to merge"), or with ``RAY_OVERRIDE_JOB_RUNTIME_ENV=1``
    keeps only ours: the user's hook is run by ours instead, after it.
    """
    raw = os.environ.get(JOB_CONFIG_ENV_VAR)
    if not raw:
        return None
    job_config = json.loads(raw)
    job_env = job_config.get("runtime_env") or {}
    hook = user_setup_hook(job_env)
    if hook is None:
        return None
    job_env.pop("worker_process_setup_hook", None)
    (job_env.get("env_vars") or {}).pop(RAY_SETUP_HOOK_ENV_VAR, None)
    os.environ[JOB_CONFIG_ENV_VAR] = json.dumps(job_config)
    return hook


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
    from ..corrections import CORRECTIONS, DIVERGENCES, POLICY_LOSSES
    from ..corrections.config import DEFAULT_THRESHOLD, same_value

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


def finalize_args(args, settings: OffPolicySettings, explicit_flags: Iterable[str]):
    """Validate and complete upstream ``args`` in place; returns (config, final settings)."""
    explicit = set(explicit_flags)
    settings = with_rollout_sampling(settings, args)
    config = settings.check(args, explicit)
    if settings.policy_loss_type is not None:
        args.actor.policy_loss_type = settings.policy_loss_type
    wants = settings.request_rollout_logprobs or config.reads_rollout_log_probs
    settings = replace(settings, request_rollout_logprobs=bool(wants and vllm_enabled(args)))
    group = run_group(config, args, settings)
    if "--logger.wandb.group" not in explicit:
        args.logger.wandb.group = group
    if "--logger.wandb.run_name" not in explicit:
        args.logger.wandb.run_name = run_name(args.logger.wandb.group, args.train.seed)
    args.offpolicy = settings
    return config, settings


# --------------------------------------------------------------------------- patch_table factories
def hierarchize(original, settings: OffPolicySettings):
    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        parsed = original(*args, **kwargs)
        state = active()
        if state is None or state.args is not None:
            return parsed
        state.config, state.final = finalize_args(parsed, state.settings, state.explicit_flags)
        state.args = parsed
        if not state.dry_run:
            patches.install(state.final)
        return parsed

    return wrapped


def ray_init(original, settings: OffPolicySettings):
    @functools.wraps(original)
    def init(*args, runtime_env=None, **kwargs):
        state = active()
        if state is None or state.final is None:
            return original(*args, runtime_env=runtime_env, **kwargs)
        user_hook = take_job_setup_hook()
        env = runtime_env_with_settings(runtime_env, state.final, user_hook)
        if state.final.cpu_backend:
            from . import cpu_backend

            env["env_vars"] = {**env["env_vars"], **cpu_backend.WORKER_ENV}
            kwargs = cpu_backend.ray_init_kwargs(kwargs)
        return original(*args, runtime_env=env, **kwargs)

    return init


def ray_is_initialized(original, settings: OffPolicySettings):
    @functools.wraps(original)
    def is_initialized():
        state = active()
        if state is None or state.args is None or state.started:
            return original()
        if state.dry_run:
            raise _StopBeforeRay()
        state.started = True
        if original():
            raise ValueError("Ray was initialised before train_ppo_ray: its workers would run without "
                             "openrlhf_offpolicy's settings; let train_ppo_ray start or connect to Ray "
                             "(it reads RAY_ADDRESS)")
        return False

    return is_initialized


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
    state = RunState(settings=settings, dry_run=dry_run, explicit_flags=set(explicit_flags))
    set_active(state)
    try:
        patches.install(settings)  # upstream's CLI module binds create_vllm_engines when it is imported
        with swapped(sys, "argv", [prog, *upstream_argv]):
            runpy.run_module(UPSTREAM_MODULE, run_name="__main__", alter_sys=True)
    except _StopBeforeRay:
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
