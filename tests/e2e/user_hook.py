"""A user's own Ray ``worker_process_setup_hook``: each worker that runs it leaves a file named by its pid."""

import os


def setup() -> None:
    directory = os.environ.get("E2E_USER_HOOK_DIR")
    if directory:
        with open(os.path.join(directory, f"{os.getpid()}.ran"), "w") as f:
            f.write(os.environ.get("DS_ACCELERATOR", ""))
