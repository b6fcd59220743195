"""The lab's --help texts are complete and its plots are readable (labels, styles, axes)."""

import subprocess
import sys

import pytest

from openrlhf_offpolicy.lab import estimators, train


@pytest.fixture
def figures(monkeypatch):
    """Capture every figure the plot functions save."""
    from matplotlib.figure import Figure

    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: saved.append(self))
    return saved


@pytest.mark.parametrize("module", ["openrlhf_offpolicy.lab", "openrlhf_offpolicy.lab.estimators",
                                    "openrlhf_offpolicy.lab.train"])
def test_every_lab_option_has_help_and_the_description_is_whole(module, monkeypatch):
    import argparse
    import importlib

    parsers = []

    def capture(self, *a, **k):
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    main = importlib.import_module(module if module != "openrlhf_offpolicy.lab" else module + ".__main__").main
    with pytest.raises(SystemExit):
        main([])
    (parser,) = parsers
    for action in parser._actions:
        assert action.help, action.option_strings
    doc = importlib.import_module(module).__doc__ or importlib.import_module(module + ".__main__").__doc__
    assert " ".join(doc.split()) in " ".join(parser.description.split())
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert "--out" in out


def test_estimator_plot_labels_axes_styles_methods_apart_and_zooms_acceptance(figures):
    results = estimators.run_bench([1, 2], [0.01], vocab=3, progress=False)
    estimators.plot(results, 0.01, "unused.png")
    (fig,) = figures
    bias, variance, accept = fig.axes[:3]
    assert all(ax.get_ylabel() for ax in (bias, variance, accept))
    styles = {(ln.get_marker(), ln.get_linestyle(), ln.get_color()) for ln in bias.get_lines()}
    assert len(styles) == len(estimators.DEFAULT_METHODS)
    lowest = min(r.accept for r in results)
    low, high = accept.get_ylim()
    assert low > 0.5 * lowest and low < lowest and high <= 1.05
    caption = " ".join(t.get_text() for t in fig.texts)
    assert "T = 1" in caption and "grad J" in caption


def test_the_t1_caption_quotes_this_runs_numbers():
    results = estimators.run_bench([1], [0.01], vocab=3, progress=False)
    worst = max(results, key=lambda r: r.bias)
    assert f"{worst.bias:.0%}" in estimators.t1_caption(results, 0.01) and worst.method in estimators.t1_caption(
        results, 0.01)


def test_mismatch_lab_kl_axis_is_symlog_and_shows_the_control_at_zero(figures):
    config = train.LabConfig(steps=4, eval_every=2, seeds=[0])

    def run(k3):
        return [[{"step": s, "reward": 0.5, "mismatch/k3": k3, **({"eval_reward": 0.5} if s % 2 else {}),
                  **({"eval_initial": 0.4} if s == 0 else {})} for s in range(4)]]

    train.plot_curves({train.CONTROL: run(0.0), "tis": run(0.01)}, config, "unused.png")
    (fig,) = figures
    kl = fig.axes[2]
    assert kl.get_yscale() == "symlog" and kl.get_ylim()[0] <= 0.0
    control = [ln for ln in kl.get_lines() if ln.get_label() == train.CONTROL][0]
    assert list(control.get_ydata()) == [0.0] * 4
    assert all(ax.get_ylabel() for ax in fig.axes[:3])
    assert len({ln.get_marker() for ln in kl.get_lines()}) == 2


def _moe_run(k3, reward=0.5, steps=4):
    return [{"step": s, "reward": reward, "routing/flip_rate": 0.5, "mismatch/k3": k3,
             **({"eval_reward": reward} if s in (0, steps - 1) else {})} for s in range(steps)]


def test_moe_plot_has_a_k3_panel_full_reward_axes_and_names_a_hidden_line(figures):
    from openrlhf_offpolicy.lab import moe

    config = moe.MoELabConfig(steps=4, seeds=[0, 1])
    moe.plot_curves({"no correction": [_moe_run(0.2), _moe_run(0.21)], "r3": [_moe_run(0.0), _moe_run(0.0)],
                     "r3 + tis": [_moe_run(0.0), _moe_run(0.0)]}, config, "unused.png")
    (fig,) = figures
    titles = [ax.get_title() for ax in fig.axes]
    assert any("mismatch" in t and "k3" in t for t in titles)
    evals = next(ax for ax in fig.axes if "eval" in ax.get_title())
    assert evals.get_ylim()[0] == 0 and evals.get_ylim()[1] >= 1.0  # no zoom that makes noise look like a trend
    labels = [ln.get_label() for ln in fig.axes[0].get_lines()]
    assert "r3 + tis (identical to r3)" in labels
    hidden = next(ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("r3 + tis"))
    assert hidden.get_linestyle() == ":"


def test_the_async_staleness_plot_has_no_decades_of_rounding_noise(figures):
    from openrlhf_offpolicy.lab import async_lab

    rows = [{"method": "tis", "staleness": s, "eval_final": 0.9, "eval_final_se": 0.01, "mismatch_k3": k3}
            for s, k3 in ((0, 1e-13), (1, 0.02), (4, 0.3))]
    async_lab.plot(rows, ["tis"], "unused.png")
    (fig,) = figures
    k3 = fig.axes[1]
    assert k3.get_yscale() == "symlog" and k3.get_ylim()[0] == 0


def test_a_short_runs_final_eval_leaves_out_the_start():
    run = [{"step": 0, "eval_reward": 0.601}, {"step": 1}, {"step": 2}, {"step": 3, "eval_reward": 0.474}]
    assert train.final_evals(run) == [0.474]


def test_lab_tables_report_mean_and_standard_error_over_three_seeds():
    assert train.LabConfig().seeds == [0, 1, 2]
    runs = [[{"step": 0, "reward": 0.5, "eval_initial": 0.4, "eval_reward": 0.5, "grad_norm": 1.0},
             {"step": 1, "reward": 0.5, "eval_reward": v, "grad_norm": 1.0}] for v in (0.6, 0.7, 0.8)]
    [row] = train.summarize({"tis": runs})
    assert row["eval_final"] == pytest.approx(0.7) and row["eval_final_se"] == pytest.approx(0.1 / 3 ** 0.5)
    table = train.summary_table([row], train.LabConfig())
    assert "0.700 ± 0.058" in table and "3 seed(s)" in table
