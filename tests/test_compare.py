"""``python -m openrlhf_offpolicy.compare``: runs logged by upstream's own TensorboardLogger (the
layout and metric names a real run writes), grouped by method with mean and band over seeds."""

import math
import os
from types import SimpleNamespace

import matplotlib.image
import pytest

from openrlhf_offpolicy import compare
from openrlhf_offpolicy.integration.driver.launch import run_name

STEPS = 12


def write_run(tb_dir, group, seed, *, k3, reward_slope, staleness=False):
    """One run as upstream 0.11.2's trainer logs it: TensorboardLogger.log_train / log_eval per step."""
    from openrlhf.utils.logging_utils import TensorboardLogger

    name = run_name(group, seed)
    logger = TensorboardLogger(SimpleNamespace(logger=SimpleNamespace(
        tensorboard_dir=str(tb_dir), wandb=SimpleNamespace(run_name=name))))
    for step in range(1, STEPS + 1):
        logs = {"reward": 0.3 + reward_slope * step + 0.01 * seed, "policy_loss": -0.1, "ppo_clip_ratio": 0.02,
                "mismatch/k3": k3 * (1 + 0.1 * seed), "is/ess": 0.9 - k3, "is/token_masked_frac": 0.05 * seed,
                "trm/accept_rate": 0.8, "generated_samples": ["text", 1.0]}
        if staleness:
            logs.update({"staleness/mean": 1.0, "staleness/max": 2.0, "staleness/dropped_frac": 0.0})
        logger.log_train(step, logs)
        if step % 4 == 0:
            logger.log_eval(step, {"eval_math_pass1": 0.5 + 0.01 * step})
    logger.close()
    return name


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    tb = tmp_path_factory.mktemp("tb")
    for seed in (1, 2, 3):
        write_run(tb, "ppo-no-correction-group_norm-lr=1e-06-tiny", seed, k3=0.2, reward_slope=0.0)
        write_run(tb, "ppo-tis-group_norm-lr=1e-06-tiny", seed, k3=0.05, reward_slope=0.02, staleness=True)
    return tb


def test_runs_are_grouped_by_method_across_seeds(logs):
    runs = compare.load_runs([str(logs)])
    assert len(runs) == 6
    groups = compare.grouped(runs)
    assert sorted(groups) == ["ppo-no-correction-group_norm-lr=1e-06-tiny", "ppo-tis-group_norm-lr=1e-06-tiny"]
    assert all(len(members) == 3 for members in groups.values())
    assert len(runs[0].scalars["train/reward"]) == STEPS


def test_the_curve_is_the_mean_and_standard_error_over_seeds(logs):
    groups = compare.grouped(compare.load_runs([str(logs)]))
    steps, mean, se, n = compare.curve(groups["ppo-tis-group_norm-lr=1e-06-tiny"], "train/mismatch/k3")
    values = [0.05 * (1 + 0.1 * s) for s in (1, 2, 3)]
    expected_mean = sum(values) / 3
    expected_se = math.sqrt(sum((v - expected_mean) ** 2 for v in values) / 2 / 3)
    assert steps == list(range(1, STEPS + 1)) and n == [3] * STEPS
    assert mean[0] == pytest.approx(expected_mean, rel=1e-6) and se[0] == pytest.approx(expected_se, rel=1e-5)


def test_the_dashboard_has_the_panels_and_one_line_and_band_per_method(logs):
    runs = compare.load_runs([str(logs)])
    fig = compare.dashboard(runs)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    for tag in ("train/reward", "train/mismatch/k3", "train/is/ess", "train/ppo_clip_ratio",
                "train/is/token_masked_frac", "train/trm/accept_rate", "train/staleness/mean", "eval/eval_math_pass1"):
        assert any(tag in t for t in titles), (tag, titles)
    k3 = next(ax for ax in fig.axes if "mismatch/k3" in ax.get_title())
    assert len(k3.lines) == 2 and len(k3.collections) == 2  # a mean line and a s.e. band per method
    assert k3.get_xlabel() == "training step" and k3.get_ylabel() == "mismatch/k3"
    stale = next(ax for ax in fig.axes if ax.get_title() == "train/staleness/mean")
    assert len(stale.lines) == 1  # only the runs that logged it


def test_the_command_writes_a_png_and_a_markdown_table(logs, tmp_path, capsys):
    out = tmp_path / "out"
    assert compare.main([str(logs), "--out", str(out)]) == 0
    png = out / "compare.png"
    image = matplotlib.image.imread(str(png))
    assert image.shape[0] > 400 and image.shape[1] > 1000 and os.path.getsize(png) > 20_000
    md = (out / "compare.md").read_text()
    assert "![dashboard](compare.png)" in md
    row = next(line for line in md.splitlines() if line.startswith("| ppo-tis"))
    assert "| 3 | 12 |" in row and " ± " in row
    # reward of the last 10% of steps (steps 11-12), mean over seeds 1-3
    final = sum(0.3 + 0.02 * s + 0.01 * seed for seed in (1, 2, 3) for s in (11, 12)) / 6
    assert f"{final:.4g}" in row
    assert "ppo-tis" in capsys.readouterr().out


def test_labels_override_the_method_and_bad_runs_are_one_line(logs, tmp_path, capsys):
    one = compare.event_dirs(str(logs))[0]
    runs = compare.load_runs([f"mine={one}"])
    assert [r.method for r in runs] == ["mine"]
    assert compare.main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert compare.main([str(empty)]) == 2


def test_wandb_runs_are_read_from_the_api_history():
    class FakeRun:
        name, group = "r1", "ppo-tis-x"

        def scan_history(self):
            return [{"train/global_step": s, "train/reward": 0.1 * s, "_step": s} for s in (1, 2, 3)]

    api = SimpleNamespace(run=lambda path: FakeRun())
    runs = compare.load_runs(["wandb:me/proj/abc"], wandb_api=api)
    assert runs[0].method == "ppo-tis-x"
    assert runs[0].scalars["train/reward"] == [(1, 0.1), (2, 0.2), (3, 0.1 * 3)]


def test_method_of_strips_the_seed_time_and_suffix():
    assert compare.method_of(run_name("ppo-tis-band=0.5:2", 7)) == "ppo-tis-band=0.5:2"
    assert compare.method_of("sapo-geo-mask_1205T10:31") == "sapo-geo-mask"  # the older run-name form
