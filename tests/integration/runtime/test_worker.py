"""Real Ray sessions on this machine: every worker runs our PolicyLoss with the CLI's settings.

The driver is ``probe_job.py``: it runs our CLI (upstream's parser, our hooks), lets upstream's
``train`` call ``ray.init`` itself, and replaces only the next call (``get_strategy``) with a probe
that starts a Ray actor and records what that worker process sees. Two ways of starting Ray:
the job starts its own local Ray (upstream's ``ray.init``), and ``ray job submit`` to a cluster
started with ``ray start --head`` (the job-level runtime env and ours are merged by Ray).
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from helpers import MINIMAL_UPSTREAM_ARGV

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
STUBS = os.path.join(HERE, "..", "..", "stubs")
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
    assert report["class_module"] == "openrlhf_offpolicy.integration.runtime.loss"
    assert report["policy_loss_type"] == "gspo_token"
    assert report["correction"] == "seq-mis" and report["threshold"] == [0.25, 4.0]
    assert report["settings"]["loss_kwargs"]["vllm_is_correction_type"] == "seq-mis"
    assert report["sampling_logprobs"] == 1, "the rollout must request pi_roll log-probs"


def test_worker_of_a_job_that_starts_its_own_ray_uses_our_loss(tmp_path):
    out = tmp_path / "report.json"
    # RAY_ADDRESS=local: a new local Ray, never another Ray found running on this machine
    proc = subprocess.run([sys.executable, os.path.join(HERE, "probe_job.py"), str(out), *CLI_ARGS],
                          cwd=REPO, env=_env(RAY_ADDRESS="local"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "probed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    _check(report)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def _stop_cluster(temp_dir):
    """Stop only the processes of this cluster (their command lines name its temp dir), by pid."""
    def ours():
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        if temp_dir.encode() in f.read():
                            pids.append(int(entry))
                except OSError:
                    pass
        return pids

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours():
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.time() + 15
        while ours() and time.time() < deadline:
            time.sleep(0.5)


@pytest.fixture
def ray_cluster(tmp_path):
    """A head node on free ports and its own temp dir, so parallel sessions' clusters never collide."""
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    env = _env()
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dashboard, agent, agent_grpc, metrics, runtime_env_agent, client = _free_ports(7)
    start = subprocess.run([ray_bin, "start", "--head", "--port", str(gcs), "--num-cpus", "2",
                            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                            "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port",
                            str(agent_grpc), "--metrics-export-port", str(metrics), "--runtime-env-agent-port",
                            str(runtime_env_agent), "--ray-client-server-port", str(client),
                            "--temp-dir", temp_dir, "--disable-usage-stats"],
                           env=env, capture_output=True, text=True, timeout=300)
    try:
        assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
        yield ray_bin, env, f"http://127.0.0.1:{dashboard}"
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


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
