"""Async lab: final reward against staleness per method, and rollout precision (fp32/bf16/fp16).

    python -m openrlhf_offpolicy.lab.async_lab [--out lab_results/async] [--staleness 0 1 2 4 8] \
        [--methods baseline tis ...] [--steps 60] [--seeds 0 1 2] [--precisions fp32 bf16 fp16]

Staleness sweep: the mismatch lab (``train.py``: Ray actors for the rollout engine and the trainer,
the project's real ``PolicyLoss``) with the engine's weights ``s`` updates behind the trainer's,
for every ``s`` and method; fp32 engine, no other mismatch, so staleness is the only source of
pi_roll != pi_old. Each run logs the ``staleness/*`` metrics computed by the same bookkeeping as
the OpenRLHF integration (``integration/runtime/staleness.py``); the table reports their mean over the
steps (``staleness/mean``), their maximum (``staleness/max``) and the measured mismatch KL.

Precision: the same lab at staleness 0 with the engine's forward in float32, bfloat16 and float16
against a float32 trainer; plus a direct measurement on the warmed-up model: the exact per-token
KL(pi_fp32 || pi_engine) over the whole vocabulary on the same sequences.

Writes ``summary.md`` (both tables), ``summary.json``, ``staleness.png`` and each run's logs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Dict, List, Sequence

import torch

from .engines import ENGINE_DTYPES, Mismatch, supervised_warmup
from .model import TinyConfig, TinyTransformer
from .train import METHODS, LabConfig, pm, run_lab, summarize

DEFAULT_METHODS = ["baseline", "tis", "icepop"]
DEFAULT_STALENESS = [0, 1, 2, 4, 8]
DEFAULT_PRECISIONS = ["fp32", "bf16", "fp16"]


def staleness_rows(histories: Dict[str, List[List[dict]]], staleness: int) -> List[dict]:
    rows = summarize(histories)
    for row in rows:
        runs = histories[row["method"]]
        records = [r for run in runs for r in run]
        row.update(
            staleness=staleness,
            measured_mean=statistics.fmean(r["staleness/mean"] for r in records),
            measured_max=max(r["staleness/max"] for r in records),
            partial_frac=statistics.fmean(r["staleness/partial_frac"] for r in records),
            mismatch_k1=statistics.fmean(r["mismatch/k1"] for r in records),
        )
    return rows


@torch.no_grad()
def forward_mismatch(model_config: TinyConfig, state, sequences: torch.Tensor) -> Dict[str, Dict[str, float]]:
    """Exact per-token KL(pi_fp32 || pi_p) over the vocabulary, same weights and sequences."""
    reference = TinyTransformer(model_config).eval()
    reference.load_state_dict(state)
    log_p = torch.log_softmax(reference(sequences).double(), -1)
    out = {}
    for name, dtype in ENGINE_DTYPES.items():
        engine = TinyTransformer(model_config).eval().to(dtype)
        engine.load_state_dict(state)
        log_q = torch.log_softmax(engine(sequences).double(), -1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        out[name] = {"kl_mean": float(kl.mean()), "kl_max": float(kl.max()),
                     "max_abs_logprob_diff": float((log_p - log_q).abs().max())}
    return out


def sweep_table(rows: List[dict]) -> str:
    lines = ["| method | staleness (updates) | eval final | measured staleness/mean | staleness/max | "
             "partial_frac | mismatch k1 | mismatch k3 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["method"], r["staleness"])):
        lines.append(f"| {r['method']} | {r['staleness']} | {pm(r, 'eval_final')} | "
                     f"{r['measured_mean']:.2f} | {r['measured_max']:.0f} | "
                     f"{r['partial_frac']:.2f} | {r['mismatch_k1']:.4f} | {r['mismatch_k3']:.4f} |")
    return "\n".join(lines)


def final_reward_grid(rows: List[dict], methods: Sequence[str], staleness: Sequence[int]) -> str:
    by = {(r["method"], r["staleness"]): pm(r, "eval_final") for r in rows}
    lines = ["| method | " + " | ".join(f"s={s}" for s in staleness) + " |",
             "|---|" + "---:|" * len(staleness)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(by[(m, s)] for s in staleness) + " |")
    return "\n".join(lines)


def precision_table(rows: List[dict], direct: Dict[str, Dict[str, float]]) -> str:
    lines = ["| engine precision | eval final | rollout reward | mismatch k1 (training, mean over steps) | "
             "mismatch k3 | direct KL(fp32 ‖ engine) per token, mean | max | max abs log-prob diff |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        d = direct[r["precision"]]
        lines.append(f"| {r['precision']} | {pm(r, 'eval_final')} | {pm(r, 'rollout_reward_final')} | "
                     f"{r['mismatch_k1']:.2e} | {r['mismatch_k3']:.2e} | {d['kl_mean']:.2e} | {d['kl_max']:.2e} | "
                     f"{d['max_abs_logprob_diff']:.2e} |")
    return "\n".join(lines)


def plot(rows: List[dict], methods: Sequence[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    markers = "osD^vP*X"
    for i, method in enumerate(methods):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["staleness"])
        xs = [r["staleness"] for r in mine]
        axes[0].errorbar(xs, [r["eval_final"] for r in mine],
                         yerr=[r["eval_final_se"] for r in mine],
                         marker=markers[i % len(markers)], capsize=3, label=method)
        axes[1].plot(xs, [r["mismatch_k3"] for r in mine], marker=markers[i % len(markers)], label=method)
    axes[0].set(xlabel="staleness of the rollout weights (policy updates)", ylabel="final greedy eval reward",
                title="final reward vs staleness (mean ± 1 s.e. over seeds)", ylim=(0, 1.02))
    # symlog, linear below 1e-4: staleness 0 has k3 at float rounding level (~1e-13), drawn as 0, not as a decade
    axes[1].set_yscale("symlog", linthresh=1e-4)
    axes[1].set(xlabel="staleness of the rollout weights (policy updates)",
                ylabel="mismatch KL(pi_roll || pi_old), k3, mean over steps (symlog)", ylim=(0, None),
                title="measured mismatch vs staleness")
    for ax in axes:
        ax.set_xticks(sorted({r["staleness"] for r in rows}))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _block(args, name: str, run) -> List[dict]:
    """One run_lab block's rows; with --resume, reuse the rows a previous (interrupted) run saved."""
    out = os.path.join(args.out, name)
    saved = os.path.join(out, "rows.json")
    if args.resume and os.path.exists(saved):
        with open(saved) as f:
            return json.load(f)
    print(f"== {name}", flush=True)
    start = time.time()
    rows = [{**row, "block_wall_s": 0.0} for row in run(out)]
    for row in rows:
        row["block_wall_s"] = time.time() - start
    with open(saved, "w") as f:
        json.dump(rows, f)
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="lab_results/async")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS), metavar="METHOD")
    parser.add_argument("--staleness", nargs="+", type=int, default=DEFAULT_STALENESS)
    parser.add_argument("--precisions", nargs="+", default=DEFAULT_PRECISIONS, choices=list(ENGINE_DTYPES))
    parser.add_argument("--precision-method", default="baseline", choices=list(METHODS))
    parser.add_argument("--steps", type=int, default=60,
                        help="RL steps per run (default %(default)s: 3 seeds of every block within ~15 minutes)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="seeds; tables are mean ± s.e. over them (default 0 1 2)")
    parser.add_argument("--resume", action="store_true", help="reuse the blocks an interrupted run completed")
    parser.add_argument("--inline", action="store_true",
                        help="run the engine and the trainer in this process (same calls, same order) instead of "
                        "as Ray actors")
    args = parser.parse_args(argv)
    if min(args.staleness) < 0 or args.steps < 1:
        parser.error("need --staleness >= 0 and --steps >= 1")
    return args


def main(argv=None, base: LabConfig = None) -> int:
    """``base``: the lab configuration besides steps, seeds and mismatch (tests shrink it)."""
    import ray

    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    base = LabConfig(**{**(base or LabConfig()).__dict__, "steps": args.steps, "seeds": list(args.seeds)})
    start = time.time()
    task = base.task_obj()
    model_config = TinyConfig(**{**base.model.to_dict(), "max_len": task.seq_len})
    state = supervised_warmup(model_config, task, base.warmup_steps, seed=0)  # what run_lab would compute
    if args.inline:
        torch.set_num_threads(1)  # as each Ray actor of the lab (num_cpus=1, OMP_NUM_THREADS=1)
    started = not args.inline and not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        sweep: List[dict] = []
        for s in args.staleness:
            config = LabConfig(**{**base.__dict__, "mismatch": Mismatch(staleness=s)})
            sweep += _block(args, f"staleness_{s}", lambda out: staleness_rows(
                run_lab(config, args.methods, out, warm_state=state, inline=args.inline), s))
        precision: List[dict] = []
        for p in args.precisions:
            config = LabConfig(**{**base.__dict__, "mismatch": Mismatch(precision=p, staleness=0)})
            rows = _block(args, f"precision_{p}", lambda out: staleness_rows(
                run_lab(config, [args.precision_method], out, warm_state=state, inline=args.inline), 0))
            precision.append({**rows[0], "precision": p})
    finally:
        if started:
            ray.shutdown()
    sequences = task.full_sequences(task.prompts(512, torch.Generator().manual_seed(7)))
    direct = forward_mismatch(model_config, state, sequences)
    elapsed = time.time() - start

    head = (f"Async lab ({elapsed / 60:.1f} min): task {base.task}, {base.steps} steps of "
            f"{base.prompts_per_step}x{base.samples_per_prompt} samples, seeds {list(args.seeds)}; final = greedy "
            "eval reward of the trainer's policy, mean of the last 3 evaluations of the second half; every value: "
            "mean ± standard error over seeds.\n\n")
    text = (head + "### Final reward vs staleness\n\n" + final_reward_grid(sweep, args.methods, args.staleness)
            + "\n\n### Staleness sweep, with the measured staleness/* metrics\n\n" + sweep_table(sweep)
            + f"\n\n![final reward vs staleness](staleness.png)\n\n### Rollout engine precision vs an fp32 trainer "
            f"({args.precision_method}, staleness 0)\n\n" + precision_table(precision, direct) + "\n")
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"sweep": sweep, "precision": precision, "direct_forward_mismatch": direct,
                   "elapsed_s": elapsed}, f, indent=2)
    plot(sweep, args.methods, os.path.join(args.out, "staleness.png"))
    print(text)
    print(f"wrote {args.out}/summary.md, summary.json, staleness.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
