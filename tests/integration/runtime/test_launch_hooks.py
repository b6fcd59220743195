"""The runtime env our ray.init hook builds, and how a job's own setup hook is chained (no Ray needed)."""

import json

import pytest

from openrlhf_offpolicy.corrections import resolve_config
from openrlhf_offpolicy.integration.runtime import launch_hooks
from openrlhf_offpolicy.integration.runtime import worker
from openrlhf_offpolicy.integration.runtime.settings import ENV_VAR, OffPolicySettings

REQUEST = {"enable_vllm_is_correction": True, "vllm_is_correction_type": "seq-mis"}
SETTINGS = OffPolicySettings(loss_kwargs=REQUEST).with_config(resolve_config(**REQUEST), {})


def test_runtime_env_keeps_the_users_env_vars_and_chains_their_hook_after_ours():
    env = launch_hooks.runtime_env_with_settings(
        {"env_vars": {"MINE": "1"}, "worker_process_setup_hook": "my.module.setup", "pip": ["x"]}, SETTINGS)
    assert env["worker_process_setup_hook"] == launch_hooks.WORKER_SETUP_HOOK and env["pip"] == ["x"]
    assert env["env_vars"]["MINE"] == "1"
    assert json.loads(env["env_vars"][ENV_VAR])["loss_config"]["correction"] == "seq-mis"
    assert env["env_vars"][worker.USER_HOOK_ENV_VAR] == "my.module.setup"


def test_the_jobs_hook_is_taken_out_of_the_job_config_ray_merges(monkeypatch):
    job = {"runtime_env": {"worker_process_setup_hook": "my.module.setup",
                           "env_vars": {"KEEP": "1", launch_hooks.RAY_SETUP_HOOK_ENV_VAR: "my.module.setup"}},
           "metadata": {}}
    monkeypatch.setenv(launch_hooks.JOB_CONFIG_ENV_VAR, json.dumps(job))
    assert launch_hooks.take_job_setup_hook() == "my.module.setup"
    left = json.loads(__import__("os").environ[launch_hooks.JOB_CONFIG_ENV_VAR])["runtime_env"]
    assert left == {"env_vars": {"KEEP": "1"}}


def test_a_hook_given_as_a_callable_reference_cannot_be_chained():
    with pytest.raises(ValueError, match="module.function"):
        launch_hooks.user_setup_hook({"worker_process_setup_hook": "ray_runtime_env_func::abc"})


def test_the_worker_hook_runs_the_users_hook_after_installing_ours(monkeypatch):
    calls = []
    monkeypatch.setattr(worker, "load_hook", lambda path: lambda: calls.append(path))
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv(worker.USER_HOOK_ENV_VAR, "my.module.setup")
    worker.setup()
    assert calls == ["my.module.setup"]
