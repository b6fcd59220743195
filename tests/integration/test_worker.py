"""Real Ray sessions on this machine: every worker runs our PolicyLoss with the CLI's settings.

The driver is ``probe_job.py``: it runs our CLI (upstream's parser, our hooks), lets upstream's
``train`` call ``ray.init`` itself, and replaces only the next call (``get_strategy``) with a probe
that starts a Ray actor and records what that worker process sees. Two ways of starting Ray:
the job starts its own local Ray (upstream's ``ray.init``), and ``ray job submit`` to a cluster
started with ``ray start --head`` (the job-level runtime env and ours are merged by Ray).
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from helpers import MINIMAL_UPSTREAM_ARGV

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
STUBS = os.path.join(HERE, "..", "stubs")
CLI_ARGS = MINIMAL_UPSTREAM_ARGV + [
    "--policy_loss_type", "gspo_token", "--enable_vllm_is_correction", "--vllm_is_correction_type", "seq-mis",
    "--vllm_is_truncated_threshold", "0.25", "4.0",
]


def _env(**extra):
    env = dict(os.environ)
    env.pop("OPENRLHF_OFFPOLICY_SETTINGS", None)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(STUBS), REPO, HERE])
    env.update(extra)
    return env


def _check(report):
    assert report["class_module"] == "openrlhf_offpolicy.integration.loss"
    assert report["policy_loss_type"] == "gspo_token"
    assert report["correction"] == "seq-mis" and report["threshold"] == [0.25, 4.0]
    assert report["settings"]["loss_kwargs"]["vllm_is_correction_type"] == "seq-mis"
    assert report["sampling_logprobs"] == 1, "the rollout must request pi_roll log-probs"


def test_worker_of_a_job_that_starts_its_own_ray_uses_our_loss(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, os.path.join(HERE, "probe_job.py"), str(out), *CLI_ARGS],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "probed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    _check(report)


@pytest.fixture
def ray_cluster(tmp_path):
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    env = _env()
    start = subprocess.run([ray_bin, "start", "--head", "--num-cpus", "2", "--dashboard-host", "127.0.0.1",
                            "--dashboard-port", "8277", "--disable-usage-stats"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
    try:
        yield ray_bin, env, "http://127.0.0.1:8277"
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.parametrize("override", ["0", "1"], ids=["merge", "override"])
def test_worker_of_a_job_submitted_to_a_cluster_uses_our_loss_then_the_users_hook(ray_cluster, tmp_path, override):
    """The job's own worker_process_setup_hook runs after ours, with or without RAY_OVERRIDE_JOB_RUNTIME_ENV."""
    ray_bin, env, address = ray_cluster
    out = tmp_path / "report.json"
    job_env = json.dumps({"env_vars": {"PROBE_JOB_ENV": "from-job-submit", "RAY_OVERRIDE_JOB_RUNTIME_ENV": override},
                          "worker_process_setup_hook": "probe_user_hook.setup"})
    cmd = [ray_bin, "job", "submit", "--address", address, "--runtime-env-json", job_env, "--",
           sys.executable, os.path.join(HERE, "probe_job.py"), str(out), *CLI_ARGS]
    deadline = time.time() + 300  # a loaded machine starts the job agent late
    while True:  # the dashboard's job server comes up a few seconds after `ray start`
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        transient = any(m in proc.stderr + proc.stdout for m in ("Connection", "No available agent"))
        if proc.returncode == 0 or time.time() > deadline or not transient:
            break
        time.sleep(3)
    assert proc.returncode == 0 and "probed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    _check(report)
    assert report["job_env"] == "from-job-submit", "the job's own runtime env must survive the merge"
    assert report["user_hook_ran"] == "yes", "the job's own setup hook must run after ours"
    assert shutil.which(ray_bin)
