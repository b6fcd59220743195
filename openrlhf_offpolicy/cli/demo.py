"""``make demo``: upstream's real pipeline on this machine's CPU, three corrections compared.

Three ``train_ppo_ray --smoke_test`` runs of one tiny task (a tiny random Qwen2, synthetic
"Repeat the letter x" prompts, the built-in reward), with the stand-in engine's weights perturbed
(``--smoke_mismatch weights --smoke_mismatch_scale 0.5``: the rollout policy is not the trained one;
mismatch k3 about 0.01, so TRM rejects about a fifth of the sequences and TIS weights reach about 1.3),
differing only in the correction: none, token TIS (Yao et al., 2025) and TRM-Max (Li et al., arXiv
2512.23075). Each run writes its TensorBoard log under ``OUT/<method>_seed<seed>/tensorboard``; the
comparison is ``OUT/compare.png`` (reward, rollout-trainer mismatch, IS effective sample size, TRM
acceptance, largest IS weight and gradient norm against the step, mean over seeds with their range) and
``OUT/summary.json``. Two seeds of 16 steps take about 5 minutes on 2 cores.

    python -m openrlhf_offpolicy.cli.demo [--out demo_results] [--steps 16] [--seeds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

# method label -> the flags that select it (the presets of configs/).
METHODS: Dict[str, List[str]] = {
    "no correction": [],
    "tis": ["--config", "configs/tis.yaml"],
    "trm": ["--config", "configs/trm.yaml"],
}
TASK = ["--actor.model_name_or_path", "Qwen/Qwen2.5-0.5B", "--actor.num_gpus_per_node", "1",
        "--ref.num_gpus_per_node", "1", "--vllm.num_engines", "1", "--algo.advantage.estimator", "group_norm",
        "--rollout.n_samples_per_prompt", "4", "--algo.kl.init_coef", "0", "--actor.adam.lr", "2e-3",
        "--smoke_mismatch", "weights", "--smoke_mismatch_scale", "0.5"]
PANELS = (("reward", "reward"), ("mismatch/k3", "mismatch k3 (rollout vs trainer)"),
          ("is/ess", "IS effective sample size (corrections only)"),
          ("trm/accept_rate", "TRM: sequences accepted"), ("is/weight_max", "largest IS weight"),
          ("actor_grad_norm", "actor gradient norm"))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_one(label: str, seed: int, steps: int, out: str) -> Dict:
    """One smoke run; its JSON result (raises with the run's tail on failure)."""
    workdir = os.path.join(out, f"{label.replace(' ', '_')}_seed{seed}")
    cmd = [sys.executable, "-m", "openrlhf_offpolicy.cli.train_ppo_ray", *TASK, *METHODS[label],
           "--train.seed", str(seed), "--smoke_test", str(steps), "--smoke_dir", workdir]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    with open(os.path.join(out, f"{os.path.basename(workdir)}.log"), "w") as f:
        f.write(proc.stdout + "\n" + proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise RuntimeError(f"demo run {label!r} (seed {seed}) failed with exit {proc.returncode}:\n{tail}")
    return json.loads(lines[-1])


def plot(results: Dict[str, List[Dict]], path: str) -> None:
    """One PNG: each panel a metric against the step, one line per method (mean over seeds, band = range)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 7))
    # One colour per method in every panel: a panel where a method logs nothing (is/ess without a
    # correction) must not shift the colours of the others.
    colours = {label: f"C{i}" for i, label in enumerate(results)}
    for ax, (metric, title) in zip(axes.flat, PANELS):
        for label, runs in results.items():
            steps = sorted({row["step"] for run in runs for row in run["steps"] if metric in row})
            values = [[row[metric] for run in runs for row in run["steps"] if row["step"] == s and metric in row]
                      for s in steps]
            if not steps:
                continue
            mean = [sum(v) / len(v) for v in values]
            ax.plot(steps, mean, marker="o", label=label, color=colours[label])
            if len(runs) > 1:
                ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.2,
                                color=colours[label])
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    seeds = len(next(iter(results.values())))
    fig.suptitle(f"CPU demo: upstream train_ppo_ray, stand-in engine with perturbed weights ({seeds} seed(s))")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openrlhf_offpolicy.cli.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="demo_results")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.seeds < 1:
        print("demo: --steps and --seeds must be >= 1", file=sys.stderr)
        return 2
    from tqdm import tqdm

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    started = time.time()
    results: Dict[str, List[Dict]] = {label: [] for label in METHODS}
    jobs = [(label, 42 + s) for s in range(args.seeds) for label in METHODS]
    for label, seed in tqdm(jobs, desc="demo runs", unit="run"):
        results[label].append(run_one(label, seed, args.steps, out))
    plot(results, os.path.join(out, "compare.png"))
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"demo: {len(jobs)} runs in {time.time() - started:.0f} s")
    for label, runs in results.items():
        last = runs[0]["steps"][-1] if runs[0]["steps"] else {}
        shown = ", ".join(f"{m} {last[m]:.4g}" for m, _ in PANELS if m in last)
        print(f"  {label:14s} last step: {shown}")
    print(f"demo: wrote {os.path.join(out, 'compare.png')} and TensorBoard logs under {out}/*/tensorboard")
    return 0


if __name__ == "__main__":
    sys.exit(main())
