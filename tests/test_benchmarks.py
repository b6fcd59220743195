"""``make bench`` runs whole: every benchmark at a toy size, each in its own process (as ``make bench``
runs them), so an ImportError or a renamed helper cannot ship; the loss bench lists every preset."""

import json
import os
import subprocess
import sys

import pytest

from openrlhf_offpolicy.presets import registered_presets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def benches():
    """``run_all.BENCHES`` (the benchmarks folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_all", os.path.join(REPO, "benchmarks", "run_all.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("run_all", module)
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(os.path.join(REPO, "benchmarks"))
    return module.BENCHES


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    run = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "run_all.py"), "--tiny", "--out", str(out)],
                         capture_output=True, text=True, timeout=900, cwd=REPO)
    return run, out


def test_every_benchmark_runs_at_a_tiny_size_and_reports_its_results(tiny_bench):
    run, out = tiny_bench
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for bench in benches():
        with open(out / bench.result) as f:
            result = json.load(f)
        assert result["summary"], f"{bench.name} wrote no summary"
    summary = (out / "summary.md").read_text()
    assert "total wall time" in summary and "load average" in summary and "FAILED" not in summary


def test_the_loss_bench_times_every_registered_preset(tiny_bench):
    _, out = tiny_bench
    table = (out / "loss_bench.md").read_text()
    for name in registered_presets():
        assert f"| preset {name} |" in table, name
