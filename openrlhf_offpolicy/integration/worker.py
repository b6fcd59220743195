"""Ray ``worker_process_setup_hook``: runs once in every worker process of the job."""

from __future__ import annotations

import os

from .settings import ENV_VAR, OffPolicySettings


def setup() -> None:
    """Install the patches with the settings the driver put into the job's runtime env."""
    payload = os.environ.get(ENV_VAR)
    if payload:
        from .patches import apply

        apply(OffPolicySettings.from_json(payload))
