"""``make demo``'s plot (cli/demo.py); the runs themselves are e2e smoke runs."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.axes  # noqa: E402

from openrlhf_offpolicy.cli import demo  # noqa: E402


def fake_results():
    def run(with_correction, seed):
        rows = []
        for step in (1, 2):
            row = {"step": step, "reward": 0.5 + seed, "mismatch/k3": 0.01, "actor_grad_norm": 1.0}
            if with_correction:
                row.update({"is/ess": 0.9, "is/weight_max": 1.2, "trm/accept_rate": 0.8})
            rows.append(row)
        return {"steps": rows}

    return {"no correction": [run(False, 0), run(False, 1)], "tis": [run(True, 0), run(True, 1)],
            "trm": [run(True, 0), run(True, 1)]}


def test_each_method_keeps_its_colour_in_panels_where_another_logs_nothing(tmp_path, monkeypatch):
    drawn = []
    original = matplotlib.axes.Axes.plot

    def recording_plot(self, *args, **kwargs):
        drawn.append((self.get_title() or None, kwargs.get("label"), kwargs.get("color")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", recording_plot)
    demo.plot(fake_results(), str(tmp_path / "compare.png"))
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    colours = {}
    for _, label, colour in drawn:
        colours.setdefault(label, set()).add(colour)
    assert set(colours) == {"no correction", "tis", "trm"}
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len({next(iter(c)) for c in colours.values()}) == 3
    # is/ess: only the two corrections are drawn (no correction logs no IS weights)
    assert sum(1 for _, label, _ in drawn if label == "no correction") == len(demo.PANELS) - 3
