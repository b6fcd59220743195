"""Smoke run of the mismatch lab with real Ray actors: a few steps, the logs and outputs it writes."""

import json
import os

from openrlhf_offpolicy.lab.engines import Mismatch
from openrlhf_offpolicy.lab.train import CONTROL, LabConfig, parse_args, run_lab

KEYS = {"step", "reward", "grad_norm", "policy_loss", "ppo_clip_ratio", "staleness", "wall_s", "mismatch/k1",
        "mismatch/k3", "mismatch/max_k2", "loss/nonfinite_frac"}
CORRECTION_KEYS = {"is/weight_mean", "is/weight_max", "is/ess", "is/token_masked_frac", "is/seq_masked_frac"}


def test_a_short_lab_run_logs_every_step_with_the_spec_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = LabConfig(task="cumsum", prompt_len=4, warmup_steps=3, steps=4, prompts_per_step=4, samples_per_prompt=4,
                       eval_every=2, eval_prompts=16, seeds=[0], mismatch=Mismatch(staleness=2, noise_prob=0.2,
                                                                                  noise_std=1.0))
    histories = run_lab(config, [CONTROL, "tis"], str(tmp_path), wandb_mode="offline", progress=False)
    for name, extra in (("no_mismatch_control_seed0", set()), ("tis_seed0", CORRECTION_KEYS)):
        lines = [json.loads(line) for line in open(tmp_path / "runs" / f"{name}.jsonl")]
        assert [r["step"] for r in lines] == [0, 1, 2, 3]
        for record in lines:
            assert KEYS <= set(record), KEYS - set(record)
            assert extra <= set(record)
        assert [("eval_reward" in r) for r in lines] == [True, False, True, True]
        assert "eval_initial" in lines[0]
        assert os.listdir(tmp_path / "tensorboard" / name)
    tis = histories["tis"][0]
    assert [r["staleness"] for r in tis] == [0.0, 1.0, 2.0, 2.0], "the engine lags by up to 2 updates"
    assert all(abs(r["mismatch/k3"]) < 1e-6 for r in histories[CONTROL][0]), "the control has no mismatch"
    assert tis[-1]["mismatch/k3"] > 0
    summary = json.load(open(tmp_path / "summary.json"))
    assert [row["method"] for row in summary["rows"]] == [CONTROL, "tis"]
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert "| tis |" in open(tmp_path / "summary.md").read()
    assert (tmp_path / "wandb").exists()


def test_lab_arguments_are_validated():
    import pytest

    with pytest.raises(SystemExit):
        parse_args(["--samples-per-prompt", "1"])
    with pytest.raises(SystemExit):
        parse_args(["--methods", "grpo"])
    _, config = parse_args(["--staleness", "0", "--precision", "bf16"])
    assert config.mismatch == Mismatch(precision="bf16")
