"""``--max_staleness``, ``--bypass_old_logprobs``, ``--vllm_dtype`` on the command line."""

import os

import pytest
from helpers import MINIMAL_UPSTREAM_ARGV, cli_process, dry_run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _undo_patches():
    yield
    from openrlhf_offpolicy.integration.runtime import patches
    patches.undo()


@pytest.mark.parametrize("extra,dtype", [([], "bfloat16"), (["--ds.param_dtype", "fp16"], "float16"),
                                         (["--ds.param_dtype", "fp16", "--vllm_dtype", "float16"], "float16")])
def test_dry_run_shows_the_engine_dtype(capsys, extra, dtype):
    status, resolved = dry_run([*MINIMAL_UPSTREAM_ARGV, *extra], capsys)
    assert status == 0, resolved
    assert resolved["offpolicy"]["vllm_engine_dtype"] == dtype
    assert resolved["offpolicy"]["settings"]["engine_dtype"] == dtype


def test_dry_run_carries_staleness_and_bypass_settings(capsys):
    status, resolved = dry_run([*MINIMAL_UPSTREAM_ARGV, "--max_staleness", "2", "--bypass_old_logprobs",
                                "--no_mismatch_metrics", "--train.async_enable"], capsys)
    assert status == 0, resolved
    settings = resolved["offpolicy"]["settings"]
    assert settings["max_staleness"] == 2 and settings["bypass_old_logprobs"] is True
    assert settings["request_rollout_logprobs"] is True  # bypass needs pi_roll even with --no_mismatch_metrics


BAD = [
    (["--vllm_dtype", "float16"], "contradicts --ds.param_dtype bf16"),
    (["--ds.param_dtype", "fp16", "--vllm_dtype", "bfloat16"], "contradicts --ds.param_dtype fp16"),
    (["--vllm_dtype", "float16", "--vllm.num_engines", "0"], "has no effect without vLLM"),
    (["--vllm_dtype", "fp16"], "invalid choice"),
    (["--max_staleness", "-1"], "integer >= 0"),
    (["--max_staleness", "1.5"], "invalid int value"),
    (["--max_staleness", "2", "--vllm.num_engines", "0"], "needs vLLM rollouts"),
    (["--bypass_old_logprobs", "--vllm.num_engines", "0"], "vLLM is off"),
    (["--bypass_old_logprobs", "--enable_vllm_is_correction", "--vllm_is_correction_type", "icepop"],
     "rho = pi_old/pi_roll = 1"),
    (["--bypass_old_logprobs", "--algo.advantage.is_correction_level", "token"], "rho = pi_old/pi_roll = 1"),
]


def _argv(extra):
    base = [a for a in MINIMAL_UPSTREAM_ARGV]
    if "--vllm.num_engines" in extra:
        i = base.index("--vllm.num_engines")
        del base[i:i + 2]
    return [*base, *extra]


@pytest.mark.parametrize("argv,message", BAD, ids=[m for _, m in BAD])
def test_contradictions_exit_2_with_one_line(argv, message, capsys):
    from openrlhf_offpolicy.cli.train_ppo_ray import main

    assert main(_argv(argv)) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("train_ppo_ray: error:") and message in lines[0], lines


def test_a_contradiction_is_reported_before_anything_heavy_starts(tmp_path):
    argv, message = BAD[0]
    result, heavy = cli_process(_argv(argv), tmp_path, cwd=REPO)
    assert result.returncode == 2, result.stderr[-1500:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("train_ppo_ray: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-1500:]
    assert heavy == [], f"imported {heavy} before refusing"
