"""Ray ``worker_process_setup_hook``: runs once in every worker process of the job.

Standard library only (plus our settings and the patch table): it installs post-import hooks and
imports nothing of torch, vLLM or DeepSpeed, so it never touches CUDA before Ray has set the
worker's ``CUDA_VISIBLE_DEVICES``; each upstream module is patched when the worker imports it.
Then the user's own setup hook, if the job had one, runs (``USER_HOOK_ENV_VAR``).
"""

from __future__ import annotations

import importlib
import os

from .settings import ENV_VAR, OffPolicySettings

USER_HOOK_ENV_VAR = "OPENRLHF_OFFPOLICY_USER_SETUP_HOOK"


def setup() -> None:
    """Install the patches with the settings the driver put into the job's runtime env."""
    payload = os.environ.get(ENV_VAR)
    if payload:
        from . import patches
        from .versions import check_versions

        check_versions()
        patches.install(OffPolicySettings.from_json(payload))
    user_hook = os.environ.get(USER_HOOK_ENV_VAR)
    if user_hook:
        load_hook(user_hook)()


def load_hook(path: str):
    """``"package.module.function"`` -> the function (as Ray resolves a setup hook given as a string)."""
    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise ValueError(f"worker_process_setup_hook {path!r} must be 'module.function'")
    return getattr(importlib.import_module(module_name), name)
