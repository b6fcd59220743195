"""A user's own Ray ``worker_process_setup_hook`` (test_worker.py chains it after ours)."""

import os


def setup() -> None:
    os.environ["PROBE_USER_HOOK_RAN"] = "yes"
