"""Benchmark: a whole training step with the project's heaviest common configurations, against a plain
step, in upstream's real loop on the CPU backend (``--smoke_test``: Ray, DeepSpeed on gloo, the
stand-in engine; the same tiny model, in the same run).

    python benchmarks/bench_whole_step.py [--steps 5] [--repeats 2] [--out bench_results]

Pairs, candidate against baseline, one DP rank, the model built by the smoke test:
  * dense Qwen2: ``configs/trm_topk.yaml`` (TRM on the top-K KL, K = 20 log-probs from the engine)
    + ``--rejection token_k1:-0.2:0.2``, every metric;
  * Qwen3-MoE: ``--routing_replay r3`` (the engine's routing replayed in both actor forwards) + ``tis``.
Baseline: the same command with no feature on (PPO, no correction, ``--no_mismatch_metrics``, so
no rollout log-prob is requested). It is upstream's step with our ``PolicyLoss`` in plain-PPO mode,
which equals upstream's loss (the loss bench times it against upstream's own). The harness cannot
run with our patches uninstalled: the CPU backend is itself a set of patches.

Step time: the trainer's part of upstream's own timers, ``timing/make_experience +
timing/ppo_train`` (the stand-in engine's generation and the weight broadcast are CPU stand-ins, not
the cluster's), and ``timing/step_total`` beside it. The first step (warm-up) is dropped; a run's
time is the median of its other steps. Runs alternate baseline and candidate; the ratio of each
repeat's pair is reported as median (min-max). Target 1.10x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import common  # noqa: E402
from tqdm import tqdm  # noqa: E402

TARGET = 1.10
ONE_RANK = ["--actor.num_gpus_per_node", "1", "--ref.num_gpus_per_node", "1", "--vllm.num_engines", "1",
            "--algo.advantage.estimator", "group_norm", "--rollout.n_samples_per_prompt", "4",
            "--algo.kl.init_coef", "0", "--actor.adam.lr", "1e-4"]
PLAIN = ["--no_mismatch_metrics"]
PAIRS = {
    "dense: trm top-K + rejection + every metric": (
        "Qwen/Qwen2.5-0.5B", ["--config", "configs/trm_topk.yaml", "--rejection", "token_k1:-0.2:0.2"]),
    "Qwen3-MoE: r3 + tis": ("Qwen/Qwen3-30B-A3B", ["--routing_replay", "r3", "--config", "configs/tis.yaml"]),
}
TRAINER = ("timing/make_experience", "timing/ppo_train")


def run_steps(model: str, flags, steps: int, workdir: str):
    """One ``--smoke_test`` run; its logged steps."""
    cmd = [sys.executable, "-m", "openrlhf_offpolicy.cli.train_ppo_ray", "--actor.model_name_or_path", model,
           *ONE_RANK, *flags, "--smoke_test", str(steps), "--smoke_dir", workdir]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env,
                          timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise RuntimeError(f"smoke run failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return json.loads(lines[-1])["steps"]


def step_times(rows):
    """(trainer seconds, total seconds): medians over the steps after the first."""
    kept = rows[1:] or rows
    trainer = statistics.median(sum(row[k] for k in TRAINER) for row in kept)
    total = statistics.median(row["timing/step_total"] for row in kept)
    return trainer, total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", default=None, help="run only the pairs whose name contains this")
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args(argv)
    pairs = {name: pair for name, pair in PAIRS.items() if args.only is None or args.only in name}
    jobs = [(name, repeat, side) for name in pairs for repeat in range(args.repeats)
            for side in (("baseline", "candidate") if repeat % 2 == 0 else ("candidate", "baseline"))]
    times = {name: {"baseline": [], "candidate": []} for name in pairs}
    with tempfile.TemporaryDirectory(prefix="bench_whole_step_") as tmp:
        for i, (name, repeat, side) in enumerate(tqdm(jobs, desc="whole-step runs", unit="run")):
            model, flags = pairs[name]
            rows = run_steps(model, PLAIN if side == "baseline" else flags, args.steps, os.path.join(tmp, str(i)))
            times[name][side].append(step_times(rows))
    lines = [f"# whole training step, CPU backend (load {common.load_average()})", "",
             "| configuration | baseline trainer s | candidate trainer s | trainer ratio | step_total ratio |",
             "|---|---:|---:|---:|---:|"]
    misses, summary, extra = [], [], {}
    for name in pairs:
        base, cand = times[name]["baseline"], times[name]["candidate"]
        trainer_ratios = [c[0] / b[0] for b, c in zip(base, cand)]
        total_ratios = [c[1] / b[1] for b, c in zip(base, cand)]
        lines.append(f"| {name} | {statistics.median(b[0] for b in base):.3f} | "
                     f"{statistics.median(c[0] for c in cand):.3f} | {common.ratio_cell(trainer_ratios, TARGET)} | "
                     f"{common.ratio_cell(total_ratios)} |")
        cell = f"{statistics.median(trainer_ratios):.3f}x ({min(trainer_ratios):.3f}-{max(trainer_ratios):.3f})"
        summary.append(f"whole step, {name}: trainer {cell} of the plain step")
        if common.is_miss(trainer_ratios, TARGET):
            misses.append(f"whole step, {name}: {statistics.median(trainer_ratios):.3f}x > {TARGET}x")
        extra[name] = {"trainer_ratios": trainer_ratios, "total_ratios": total_ratios, "baseline": base,
                       "candidate": cand}
    lines += ["", f"{args.steps} steps per run (the first dropped), {args.repeats} pair(s) per configuration; "
              "trainer = timing/make_experience + timing/ppo_train (upstream's timers)"]
    common.write_results(args.out, "whole_step", "\n".join(lines), misses, summary, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
