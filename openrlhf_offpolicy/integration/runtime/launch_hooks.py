"""The patch table's entries for the launching process (``in_launcher``: while ``driver.launch.run``
executes upstream's ``__main__``), and the job runtime env that carries the settings to the workers.

  * ``openrlhf.utils.config.hierarchize`` (called right after upstream's ``parse_args``): the run's
    ``finalize`` (``driver.launch.finalize_args``) validates and completes the parsed arguments, then
    the patches are re-installed with the final settings;
  * ``ray.init``: the settings and our ``worker_process_setup_hook`` join the job's runtime env, so
    every Ray worker installs the patches when it starts; a setup hook the job already had
    (``ray job submit --runtime-env-json``) is moved behind ours (``worker.USER_HOOK_ENV_VAR``);
  * ``ray.is_initialized`` (the first thing upstream's ``train`` calls) ends a ``--dry_run`` after
    all of upstream's own argument checks, and refuses a Ray that was started before (its workers
    would not have our settings).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Optional

from . import patches
from .run_state import active
from .settings import ENV_VAR, OffPolicySettings
from .worker import USER_HOOK_ENV_VAR

WORKER_SETUP_HOOK = "openrlhf_offpolicy.integration.runtime.worker.setup"
JOB_CONFIG_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the job's driver
RAY_SETUP_HOOK_ENV_VAR = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"  # Ray's own record of a setup hook


class StopBeforeRay(Exception):
    """Raised where upstream would start Ray, to end a dry run."""


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


def hierarchize(original, settings: OffPolicySettings):
    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        parsed = original(*args, **kwargs)
        state = active()
        if state is None or state.args is not None:
            return parsed
        state.config, state.final = state.finalize(parsed)
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
            raise StopBeforeRay()
        state.started = True
        if original():
            raise ValueError("Ray was initialised before train_ppo_ray: its workers would run without "
                             "openrlhf_offpolicy's settings; let train_ppo_ray start or connect to Ray "
                             "(it reads RAY_ADDRESS)")
        return False

    return is_initialized
