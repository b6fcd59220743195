"""A truncated rollout (top_p < 1) with a consumer of rollout log-probs: refused, or matched."""

import os

import pytest
from helpers import MINIMAL_UPSTREAM_ARGV, cli_process, dry_run

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SEQ_MIS = ["--rollout.top_p", "0.9", "--enable_vllm_is_correction", "--vllm_is_correction_type", "seq-mis"]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_top_p_with_a_correction_exits_2_with_one_line_before_anything_heavy(tmp_path):
    result, heavy = cli_process([*MINIMAL_UPSTREAM_ARGV, *SEQ_MIS, "--dry_run"], tmp_path, cwd=REPO)
    assert result.returncode == 2, result.stderr[-1500:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("train_ppo_ray: error:")]
    assert len(lines) == 1 and "top_p=0.9" in lines[0] and "--match_rollout_sampling" in lines[0]
    assert heavy == [], f"imported {heavy} before refusing"


def test_top_p_with_match_rollout_sampling_resolves_the_truncation(capsys):
    status, out = dry_run(MINIMAL_UPSTREAM_ARGV + SEQ_MIS + ["--match_rollout_sampling"], capsys)
    assert status == 0
    settings = out["offpolicy"]["settings"]
    assert settings["match_rollout_sampling"] is True and settings["rollout_top_p"] == 0.9


@pytest.mark.parametrize("extra,refused", [
    ([], True),  # the mismatch/* metrics read the rollout log-probs
    (["--no_mismatch_metrics"], False),  # nothing reads them
    (["--no_mismatch_metrics", "--policy_loss_type", "dppo"], True),  # DPPO's mu
])
def test_every_consumer_of_rollout_log_probs_is_refused_with_top_p(extra, refused, capsys):
    status, out = dry_run(MINIMAL_UPSTREAM_ARGV + ["--rollout.top_p", "0.95", *extra], capsys)
    assert status == (2 if refused else 0), out
