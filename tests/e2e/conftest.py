"""The e2e runs' fixture; the run helpers are in ``smoke_runs`` (this folder is put on ``sys.path``)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from smoke_runs import BASE, DENSE, Run, run_cli  # noqa: E402


@pytest.fixture
def smoke(tmp_path):
    """``smoke(*flags, steps=2, model="Qwen/Qwen2.5-0.5B")``: a finished smoke run of BASE + flags."""

    def start(*flags: str, steps: int = 2, model: str = DENSE, base=BASE, workdir=None,
              env=None) -> Run:
        workdir = str(workdir or tmp_path / "smoke")
        args = ["--actor.model_name_or_path", model, *base, *flags, "--smoke_test", str(steps),
                "--smoke_dir", workdir]
        return run_cli(args, workdir, env)

    return start
