"""``python -m openrlhf_offpolicy.compare RUN [RUN ...]``: one PNG dashboard and a markdown table.

A RUN is
  * a tensorboard directory written by upstream's trainer (``--logger.tensorboard_dir DIR`` writes one
    sub-directory per run, named after ``--logger.wandb.run_name``): DIR itself or one run in it;
  * ``wandb:ENTITY/PROJECT/RUN_ID`` (read through ``wandb.Api`` where it is reachable);
  * either of them prefixed ``LABEL=`` to set its method label.
Runs are grouped by method: the label, else the run name without this project's ``_seed<N>_<time>_<id>``
suffix (``integration.driver.launch.run_name``), so the seeds of one configuration form one group. Each
panel shows the mean over a group's seeds at each step and a band of one standard error (no band for
one seed). Scalars are read with tensorboard's own ``EventAccumulator``; the plot is matplotlib's.

Panels: ``train/reward``, ``train/mismatch/k3``, ``train/is/ess``, ``train/ppo_clip_ratio``, then every
acceptance / masked fraction and ``staleness/*`` metric some run logged, then eval pass@1. The
table gives, per method, the mean ± standard error over seeds of each seed's mean over the last
10% of its logged steps (so a short run's first value does not count as its final one).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

CORE = ("train/reward", "train/mismatch/k3", "train/is/ess", "train/ppo_clip_ratio")
FRACTION = re.compile(r"^train/(.*(masked_frac|accept_rate|kept_frac|clipped_frac|selected_frac|nonfinite_frac))$")
STALENESS = re.compile(r"^train/staleness/(mean|max|dropped_frac|partial_frac)$")
EVAL = re.compile(r"^eval/eval_(.+_)?pass1$")
TITLES = {
    "train/reward": "reward (train/reward)",
    "train/mismatch/k3": "mismatch KL k3 (train/mismatch/k3)",
    "train/is/ess": "IS effective sample size (train/is/ess)",
    "train/ppo_clip_ratio": "clip ratio (train/ppo_clip_ratio)",
}
RUN_SUFFIX = re.compile(r"(_seed\d+)?_\d{4}T\d{2}:?\d{2}(\d{2})?(_[0-9a-f]{4})?$")
LINESTYLES = ("-", "--", ":", "-.")
TAIL = 0.1  # the table's "final" value: the mean over the last 10% of a run's logged steps


class CompareError(ValueError):
    """A RUN that cannot be read (one line, exit status 2)."""


@dataclass
class Run:
    """One run's scalar series: tag -> [(step, value)] sorted by step."""

    name: str
    method: str
    scalars: Dict[str, List[Tuple[int, float]]] = field(default_factory=dict)


def method_of(run_name: str) -> str:
    """The method group of a run named by ``integration.driver.launch.run_name`` (or any other name)."""
    return RUN_SUFFIX.sub("", run_name) or run_name


# --------------------------------------------------------------------------- readers
def event_dirs(path: str) -> List[str]:
    """The directories under ``path`` (itself included) that hold tensorboard event files."""
    found = []
    for root, _, files in os.walk(path):
        if any(f.startswith("events.out.tfevents") for f in files):
            found.append(root)
    return sorted(found)


def read_tensorboard(run_dir: str) -> Dict[str, List[Tuple[int, float]]]:
    """Every scalar of one run directory, read with tensorboard's EventAccumulator (all points kept)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags().get("scalars", []):
        points = {e.step: float(e.value) for e in acc.Scalars(tag)}  # a step written twice: the last wins
        out[tag] = sorted(points.items())
    return out


def read_wandb(path: str, api=None) -> Tuple[str, str, Dict[str, List[Tuple[int, float]]]]:
    """(run name, group, scalars) of the wandb run ``ENTITY/PROJECT/RUN_ID``; steps from train/global_step."""
    if api is None:
        try:
            import wandb

            api = wandb.Api(timeout=30)
        except Exception as e:  # no wandb, no key, no network
            raise CompareError(f"wandb:{path}: the wandb API is not reachable ({str(e).splitlines()[0]})") from None
    try:
        run = api.run(path)
        rows = list(run.scan_history())
    except Exception as e:
        raise CompareError(f"wandb:{path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    scalars: Dict[str, Dict[int, float]] = {}
    for row in rows:
        step = row.get("train/global_step", row.get("eval/global_step", row.get("_step")))
        if step is None:
            continue
        for key, value in row.items():
            if (key.startswith(("train/", "eval/")) and not key.endswith("global_step")
                    and isinstance(value, (int, float)) and not isinstance(value, bool)):
                scalars.setdefault(key, {})[int(step)] = float(value)
    return run.name, run.group or "", {k: sorted(v.items()) for k, v in scalars.items()}


def load_runs(specs: Sequence[str], wandb_api=None) -> List[Run]:
    """The runs named by the command line's RUN arguments (see the module docstring)."""
    runs: List[Run] = []
    for spec in specs:
        label, sep, target = spec.partition("=")
        if not sep or "/" in label or label.startswith("wandb:"):
            label, target = "", spec
        if target.startswith("wandb:"):
            name, group, scalars = read_wandb(target[len("wandb:"):], wandb_api)
            runs.append(Run(name, label or group or method_of(name), scalars))
            continue
        if not os.path.isdir(target):
            raise CompareError(f"{target}: no such directory (give a tensorboard directory or wandb:ENTITY/PROJECT/ID)")
        dirs = event_dirs(target)
        if not dirs:
            raise CompareError(f"{target}: no tensorboard event files under it (upstream writes them with "
                               "--logger.tensorboard_dir DIR)")
        for run_dir in dirs:
            name = os.path.basename(os.path.normpath(run_dir))
            runs.append(Run(name, label or method_of(name), read_tensorboard(run_dir)))
    return runs


# --------------------------------------------------------------------------- statistics
def mean_and_se(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def grouped(runs: Iterable[Run]) -> Dict[str, List[Run]]:
    out: Dict[str, List[Run]] = {}
    for run in runs:
        out.setdefault(run.method, []).append(run)
    return out


def curve(runs: Sequence[Run], tag: str) -> Tuple[List[int], List[float], List[float], List[int]]:
    """(steps, mean, standard error, seed count) over the runs that logged ``tag`` at each step."""
    by_step: Dict[int, List[float]] = {}
    for run in runs:
        for step, value in run.scalars.get(tag, []):
            if math.isfinite(value):
                by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    stats = [mean_and_se(by_step[s]) for s in steps]
    return steps, [m for m, _ in stats], [se for _, se in stats], [len(by_step[s]) for s in steps]


def final_value(points: Sequence[Tuple[int, float]]) -> Optional[float]:
    """A run's mean over the last 10% of its logged steps (at least one)."""
    values = [v for _, v in points if math.isfinite(v)]
    if not values:
        return None
    k = max(1, int(math.ceil(TAIL * len(values))))
    return sum(values[-k:]) / k


def panels(runs: Sequence[Run]) -> List[str]:
    """The tags to plot: the core four, then fractions, staleness and eval pass@1 that some run logged."""
    tags = sorted({t for run in runs for t in run.scalars})
    extra = [t for t in tags if FRACTION.match(t)] + [t for t in tags if STALENESS.match(t)]
    extra += [t for t in tags if EVAL.match(t)]
    return list(CORE) + [t for t in dict.fromkeys(extra) if t not in CORE]


# --------------------------------------------------------------------------- outputs
def dashboard(runs: Sequence[Run]):
    """The matplotlib Figure: one panel per tag of ``panels``, one line (mean) and band (± s.e.) per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tags = panels(runs)
    groups = grouped(runs)
    cols = min(4, len(tags))
    rows = int(math.ceil(len(tags) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, tag in zip(axes.flat, tags):
        ax.set_title(TITLES.get(tag, tag), fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel(tag.split("/", 1)[1] if "/" in tag else tag)
        drawn = False
        for i, (method, members) in enumerate(groups.items()):
            steps, mean, se, _ = curve(members, tag)
            if not steps:
                continue
            color = colors[i % len(colors)]
            seeds = sum(1 for r in members if r.scalars.get(tag))
            # dashes and decreasing widths keep coinciding methods visible (no line hides another)
            ax.plot(steps, mean, color=color, linestyle=LINESTYLES[i % len(LINESTYLES)],
                    linewidth=max(0.8, 2.2 - 0.4 * i), label=f"{method} (n={seeds})")
            if seeds > 1:
                ax.fill_between(steps, [m - s for m, s in zip(mean, se)], [m + s for m, s in zip(mean, se)],
                                color=color, alpha=0.2, linewidth=0)
            drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "not logged by these runs", ha="center", va="center", transform=ax.transAxes,
                    fontsize=8, color="gray")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tags):]:
        ax.set_visible(False)
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3) or 1, fontsize=8,
               title="method (n = seeds); line: mean, band: ± 1 standard error", title_fontsize=8)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * math.ceil(len(labels) / 3), 1, 1))
    return fig


TABLE_TAGS = ("train/reward", "train/mismatch/k3", "train/is/ess", "train/ppo_clip_ratio",
              "train/is/token_masked_frac", "train/is/seq_masked_frac", "train/staleness/mean")


def table(runs: Sequence[Run]) -> str:
    """Markdown: per method, seeds, steps and each metric's final value as mean ± s.e. over seeds."""
    present = [t for t in TABLE_TAGS if any(r.scalars.get(t) for r in runs)]
    present += [t for t in panels(runs) if EVAL.match(t) and t not in present]
    head = "| method | seeds | steps | " + " | ".join(f"`{t}`" for t in present) + " |"
    lines = [head, "|---|---:|---:|" + "---:|" * len(present)]
    for method, members in grouped(runs).items():
        steps = max((len(points) for r in members for points in r.scalars.values()), default=0)
        cells = []
        for tag in present:
            finals = [f for f in (final_value(r.scalars.get(tag, [])) for r in members) if f is not None]
            if not finals:
                cells.append("—")
                continue
            mean, se = mean_and_se(finals)
            cells.append(f"{mean:.4g} ± {se:.2g}" if len(finals) > 1 else f"{mean:.4g}")
        lines.append(f"| {method} | {len(members)} | {steps} | " + " | ".join(cells) + " |")
    note = (f"\nFinal value: each run's mean over the last {int(TAIL * 100)}% of its logged steps; "
            "mean ± standard error over the runs (seeds) of a method.\n")
    return "\n".join(lines) + "\n" + note


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m openrlhf_offpolicy.compare",
        description="Compare train_ppo_ray runs: one PNG dashboard and a markdown table, grouped by method "
                    "(mean and a ± standard-error band over seeds).")
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="tensorboard dir (--logger.tensorboard_dir or one run in it), or "
                             "wandb:ENTITY/PROJECT/RUN_ID; prefix LABEL= to name its method")
    parser.add_argument("--out", default="compare_results", help="output directory (default compare_results)")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.runs)
    except CompareError as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    png, md = os.path.join(args.out, "compare.png"), os.path.join(args.out, "compare.md")
    fig = dashboard(runs)
    fig.savefig(png, dpi=100)
    text = table(runs)
    with open(md, "w") as f:
        f.write(f"# Runs compared\n\n![dashboard](compare.png)\n\n{text}")
    print(text)
    print(f"wrote {png} and {md} ({len(runs)} runs, {len(grouped(runs))} methods)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
