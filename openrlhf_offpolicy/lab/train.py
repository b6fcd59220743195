"""Mismatch lab: real RL on CPU with a rollout engine and a trainer that disagree.

    python -m openrlhf_offpolicy.lab.train [--methods baseline tis icepop ...] \
        [--staleness 3] [--precision bf16] [--noise-prob 0.2 --noise-std 3] [--steps 200] \
        [--seeds 0 1 2] [--out lab_results/train] [--wandb [--wandb-mode offline]]

A tiny transformer (``model.py``) is warmed up with a short supervised phase on a verifiable digit
task (``task.py``: by default the running sum mod 10, graded reward), then trained with GRPO-style
groups. The rollout engine and the trainer run as separate Ray actors (like OpenRLHF's vLLM engines
and DeepSpeed actors) and disagree as configured: bfloat16 rollouts, logit noise on a fraction of
generated tokens, and stale engine weights (async off-policy). With stale weights the next rollout
is dispatched while the trainer is still updating, as in an asynchronous pipeline. Every method
uses the project's real ``PolicyLoss``. Per step it records the rollout reward, the trainer's
greedy evaluation reward, the mismatch KL (``mismatch/k1``, ``mismatch/k3``), masked fractions,
the gradient norm and every metric of the metric table (docs/design.md), to JSONL and tensorboard
(and wandb when asked; offline mode needs no network), then writes a summary table and plots.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from ..compare import mean_and_se
from ..presets import registered_presets
from .engines import ENGINE_DTYPES, Mismatch, RolloutEngine, Trainer, supervised_warmup
from .model import TinyConfig
from .task import DigitTask

CONTROL = "no mismatch (control)"

# Every registered method's preset (the paper's values), derived from the registry: label -> PolicyLoss
# kwargs. The control run trains the baseline (no correction) without mismatch.
METHODS: Dict[str, dict] = {CONTROL: {}, **registered_presets()}
METHODS[CONTROL] = METHODS["baseline"]
DEFAULT_METHODS = [CONTROL, "baseline", "tis", "icepop", "seq_tis", "geo_mask", "trm"]


@dataclass
class LabConfig:
    task: str = "cumsum"
    prompt_len: int = 6
    warmup_steps: int = 100
    steps: int = 200
    prompts_per_step: int = 32
    samples_per_prompt: int = 8
    lr: float = 1.5e-3
    eval_every: int = 10
    eval_prompts: int = 256
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    mismatch: Mismatch = field(default_factory=lambda: Mismatch(staleness=3))
    model: TinyConfig = field(default_factory=TinyConfig)

    def task_obj(self) -> DigitTask:
        return DigitTask(prompt_len=self.prompt_len, kind=self.task)


def loss_kwargs(label: str) -> dict:
    return dict(METHODS[label])


class InlineActor:
    """Runs a lab actor class in this process with Ray's call syntax (``--inline``): ``cls.remote(...)``
    builds it, ``handle.method.remote(...)`` calls it at once and returns the value. Same calls in the
    same order as with Ray, without the processes (for machines where Ray sessions do not survive)."""

    def __init__(self, cls) -> None:
        self.cls = cls

    def remote(self, *args, **kwargs):
        obj = self.cls(*args, **kwargs)
        return SimpleNamespace(**{name: SimpleNamespace(remote=getattr(obj, name))
                                  for name in dir(obj) if not name.startswith("_") and callable(getattr(obj, name))})


def run_method(label: str, seed: int, config: LabConfig, warm_state, engine_cls, trainer_cls,
               on_step=None) -> List[dict]:
    """Train one method with one seed; returns the per-step history."""
    inline = isinstance(engine_cls, InlineActor)
    if not inline:
        import ray
    else:
        ray = SimpleNamespace(get=lambda value: value, kill=lambda actor: None)

    task = config.task_obj()
    mismatch = Mismatch() if label == CONTROL else config.mismatch
    model_config = TinyConfig(**{**config.model.to_dict(), "max_len": task.seq_len})
    engine = engine_cls.remote(model_config, task, mismatch, seed=1000 + seed)
    trainer = trainer_cls.remote(model_config, task, loss_kwargs(label), lr=config.lr, seed=seed,
                                 init_state=warm_state)
    prompt_gen = torch.Generator().manual_seed(seed)
    eval_prompts = task.prompts(config.eval_prompts, torch.Generator().manual_seed(12345))
    lag = mismatch.staleness
    versions = {0: trainer.weights.remote()}
    n = config.samples_per_prompt

    def rollout(step: int):
        version = max(0, step - lag)
        engine.load_weights.remote(versions[version], version)
        return engine.generate.remote(task.prompts(config.prompts_per_step, prompt_gen), n)

    history: List[dict] = []
    initial = ray.get(trainer.evaluate.remote(eval_prompts))  # the warmed-up policy, before any RL update
    pending = rollout(0)
    start = time.time()
    for step in range(config.steps):
        train_ref = trainer.train_step.remote(pending, n)
        versions[step + 1] = trainer.weights.remote()
        for old in [v for v in versions if v < step + 1 - lag]:
            del versions[old]
        if lag >= 1 and step + 1 < config.steps:  # async: the engine samples while the trainer updates
            pending = rollout(step + 1)
        record = {"step": step, **ray.get(train_ref)}
        if step == 0:
            record["eval_initial"] = initial["eval_reward"]
        if lag == 0 and step + 1 < config.steps:
            pending = rollout(step + 1)
        if step % config.eval_every == 0 or step == config.steps - 1:
            record.update(ray.get(trainer.evaluate.remote(eval_prompts)))
        record["wall_s"] = time.time() - start
        history.append(record)
        if on_step is not None:
            on_step(record)
    for actor in (engine, trainer):
        ray.kill(actor)
    return history


def final_evals(run: List[dict], k: int = 3) -> List[float]:
    """The last ``k`` greedy evaluations of the run's second half (at least its last one): a short run's
    final value never includes the evaluation at the start."""
    evals = [(r["step"], r["eval_reward"]) for r in run if "eval_reward" in r]
    half = evals[-1][0] / 2
    late = [v for step, v in evals if step >= half] or [evals[-1][1]]
    return late[-k:]


def summarize(histories: Dict[str, List[List[dict]]]) -> List[dict]:
    """One row per method: each statistic is computed per seed, then mean and standard error over seeds
    (``NAME`` and ``NAME_se``); ``eval_final_min`` / ``_max`` give the range over seeds."""
    rows = []
    for label, runs in histories.items():
        def over_seeds(name, fn, row):
            values = [fn(run) for run in runs]
            row[name], row[f"{name}_se"] = mean_and_se(values)
            return values

        row: dict = {"method": label, "seeds": len(runs)}
        over_seeds("eval_start", lambda run: run[0]["eval_initial"], row)
        final = over_seeds("eval_final", lambda run: statistics.fmean(final_evals(run)), row)
        row["eval_final_min"], row["eval_final_max"] = min(final), max(final)
        over_seeds("eval_best", lambda run: max(r["eval_reward"] for r in run if "eval_reward" in r), row)
        over_seeds("rollout_reward_final", lambda run: statistics.fmean(r["reward"] for r in run[-10:]), row)
        over_seeds("mismatch_k3", lambda run: statistics.fmean(r.get("mismatch/k3", 0.0) for r in run), row)
        over_seeds("token_masked_frac", lambda run: statistics.fmean(r.get("is/token_masked_frac", 0.0) for r in run),
                   row)
        over_seeds("grad_norm", lambda run: statistics.fmean(r["grad_norm"] for r in run), row)
        rows.append(row)
    return rows


def pm(row: dict, name: str, digits: int = 3) -> str:
    """``mean ± s.e.`` of a summarized statistic."""
    return f"{row[name]:.{digits}f} ± {row[name + '_se']:.{digits}f}"


def summary_table(rows: List[dict], config: LabConfig) -> str:
    head = (f"Mismatch lab: task {config.task} (prompt {config.prompt_len} digits, graded reward), "
            f"{config.steps} steps of {config.prompts_per_step}x{config.samples_per_prompt} samples, lr {config.lr}, "
            f"mismatch: {config.mismatch.describe()}; greedy eval reward of the trainer's policy (start: "
            f"after the warm-up, before RL; final: mean of the last 3 evaluations of the second half). Every "
            f"value: mean ± standard error over {len(config.seeds)} seed(s).\n\n")
    lines = ["| method | eval start | eval final | best | rollout reward | mismatch k3 | masked tokens | grad norm |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['eval_start']:.3f} | {pm(r, 'eval_final')} | {pm(r, 'eval_best')} | "
            f"{pm(r, 'rollout_reward_final')} | {pm(r, 'mismatch_k3', 4)} | {pm(r, 'token_masked_frac')} | "
            f"{pm(r, 'grad_norm', 2)} |")
    return head + "\n".join(lines)


def plot_curves(histories: Dict[str, List[List[dict]]], config: LabConfig, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    markers = "osD^vP*Xh<>p8"
    for i, (label, runs) in enumerate(histories.items()):
        style = dict(linestyle="--", color="black") if label == CONTROL else {}
        marks = dict(marker=markers[i % len(markers)], markevery=max(1, config.steps // 10), markersize=5)
        steps = [-1] + [r["step"] for r in runs[0] if "eval_reward" in r]
        per_seed = [[run[0]["eval_initial"]] + [r["eval_reward"] for r in run if "eval_reward" in r] for run in runs]
        stats = [mean_and_se(vals) for vals in zip(*per_seed)]
        line, = axes[0].plot(steps, [m for m, _ in stats], label=label, **{**style, **marks, "markevery": 1})
        color = style.get("color", line.get_color())
        if len(runs) > 1:
            axes[0].fill_between(steps, [m - e for m, e in stats], [m + e for m, e in stats], color=color, alpha=0.15,
                                 linewidth=0)
        rewards = [statistics.fmean(vals) for vals in zip(*[[r["reward"] for r in run] for run in runs])]
        axes[1].plot(range(len(rewards)), _smooth(rewards), color=color, label=label,
                     linestyle=style.get("linestyle", "-"), **marks)
        k3 = [statistics.fmean(vals) for vals in zip(*[[r.get("mismatch/k3", 0.0) for r in run] for run in runs])]
        axes[2].plot(range(len(k3)), _smooth(k3), color=color, label=label, linestyle=style.get("linestyle", "-"),
                     **marks)
    axes[0].set(title="greedy eval reward (trainer's policy), band: ± 1 s.e. over seeds", xlabel="step",
                ylabel="mean reward", ylim=(0, 1.02))
    axes[1].set(title="rollout reward (engine samples, smoothed)", xlabel="step", ylabel="mean reward",
                ylim=(0, 1.02))
    # symlog: linear below 1e-4, so the control's exact 0 is drawn on the axis, log above.
    axes[2].set_yscale("symlog", linthresh=1e-4)
    axes[2].set(title="mismatch KL(pi_roll || pi_old), k3 (smoothed)", xlabel="step",
                ylabel="KL per token (symlog; control = 0)", ylim=(0, 2.0))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Mismatch lab — {config.mismatch.describe()} — mean over {len(config.seeds)} seed(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _smooth(values: Sequence[float], width: int = 5) -> List[float]:
    out = []
    for i in range(len(values)):
        window = values[max(0, i - width + 1): i + 1]
        out.append(sum(window) / len(window))
    return out


class Loggers:
    """JSONL always; tensorboard when available; wandb when asked (offline works without network)."""

    def __init__(self, out_dir: str, label: str, seed: int, wandb_mode: Optional[str], group: str, config: dict):
        self.name = f"{re.sub(r'[^A-Za-z0-9.]+', '_', label).strip('_')}_seed{seed}"
        self.jsonl = open(os.path.join(out_dir, "runs", f"{self.name}.jsonl"), "w")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(out_dir, "tensorboard", self.name))
        except ImportError:  # tensorboard is optional; the JSONL log always exists
            pass
        self.wandb_run = None
        if wandb_mode:
            import wandb

            self.wandb_run = wandb.init(project="openrlhf_offpolicy_lab", group=group, name=self.name,
                                        mode=wandb_mode, dir=out_dir, config={**config, "method": label},
                                        reinit="finish_previous")

    def log(self, record: dict) -> None:
        self.jsonl.write(json.dumps(record) + "\n")
        step = record["step"]
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=step)

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def run_lab(config: LabConfig, methods: Sequence[str], out_dir: str, wandb_mode: Optional[str] = None,
            progress: bool = True, warm_state=None, inline: bool = False) -> Dict[str, List[List[dict]]]:
    import ray

    os.makedirs(os.path.join(out_dir, "runs"), exist_ok=True)
    task = config.task_obj()
    model_config = TinyConfig(**{**config.model.to_dict(), "max_len": task.seq_len})
    started_ray = not inline and not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    if inline:
        engine_cls, trainer_cls = InlineActor(RolloutEngine), InlineActor(Trainer)
    else:
        engine_cls = ray.remote(num_cpus=1)(RolloutEngine)
        trainer_cls = ray.remote(num_cpus=1)(Trainer)
    if warm_state is None:  # callers running several labs on one task pass it once
        warm_state = supervised_warmup(model_config, task, config.warmup_steps, seed=0)
    plain = {**asdict(config), "mismatch": config.mismatch.to_dict(), "model": model_config.to_dict()}
    group = f"lab-{config.task}-{config.mismatch.describe()}"
    histories: Dict[str, List[List[dict]]] = {}
    total = len(methods) * len(config.seeds) * config.steps
    try:
        with tqdm(total=total, desc="mismatch lab", disable=not progress) as bar:
            for label in methods:
                for seed in config.seeds:
                    bar.set_postfix_str(f"{label} seed {seed}")
                    loggers = Loggers(out_dir, label, seed, wandb_mode, group, plain)

                    def on_step(record, loggers=loggers):
                        loggers.log(record)
                        bar.update(1)

                    history = run_method(label, seed, config, warm_state, engine_cls, trainer_cls, on_step)
                    loggers.close()
                    histories.setdefault(label, []).append(history)
    finally:
        if started_ray:
            ray.shutdown()
    rows = summarize(histories)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump({"config": plain, "rows": rows}, f, indent=2)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(summary_table(rows, config) + "\n")
    plot_curves(histories, config, os.path.join(out_dir, "curves.png"))
    return histories


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS), metavar="METHOD",
                        help=f"methods to compare (default: {DEFAULT_METHODS}); choices: {list(METHODS)}")
    parser.add_argument("--task", default="cumsum", choices=["reverse", "sort", "cumsum"],
                        help="digit task: reverse, sort or cumsum (running sum mod 10; default)")
    parser.add_argument("--prompt-len", type=int, default=6, help="digits per prompt (default 6)")
    parser.add_argument("--warmup-steps", type=int, default=100,
                        help="supervised warm-up steps before RL (default 100)")
    parser.add_argument("--steps", type=int, default=200, help="RL steps per method and seed (default 200)")
    parser.add_argument("--prompts-per-step", type=int, default=32, help="prompts per RL step (default 32)")
    parser.add_argument("--samples-per-prompt", type=int, default=8,
                        help="responses per prompt, the GRPO group size (>= 2; default 8)")
    parser.add_argument("--lr", type=float, default=1.5e-3, help="trainer learning rate (default 1.5e-3)")
    parser.add_argument("--eval-every", type=int, default=10,
                        help="greedy evaluation of the trainer's policy every N steps (default 10)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds; curves and table are means ± s.e. over them (default 0 1 2)")
    parser.add_argument("--precision", default="fp32", choices=list(ENGINE_DTYPES), help="rollout engine precision")
    parser.add_argument("--noise-prob", type=float, default=0.0, help="fraction of generated tokens with logit noise")
    parser.add_argument("--noise-std", type=float, default=0.0, help="std of that logit noise")
    parser.add_argument("--staleness", type=int, default=3, help="engine weights lag the trainer by this many updates")
    parser.add_argument("--out", default="lab_results/train",
                        help="output folder: summary.md/.json, curves.png, runs/*.jsonl, tensorboard/ "
                        "(default lab_results/train)")
    parser.add_argument("--wandb", action="store_true", help="also log to wandb (project openrlhf_offpolicy_lab)")
    parser.add_argument("--wandb-mode", default="offline", choices=["offline", "online"],
                        help="wandb mode with --wandb: offline (default, no network) or online")
    args = parser.parse_args(argv)
    if args.samples_per_prompt < 2:
        parser.error("--samples-per-prompt must be >= 2 (GRPO groups)")
    if not 0 <= args.noise_prob <= 1 or args.noise_std < 0 or args.staleness < 0:
        parser.error("need 0 <= --noise-prob <= 1, --noise-std >= 0 and --staleness >= 0")
    config = LabConfig(task=args.task, prompt_len=args.prompt_len, warmup_steps=args.warmup_steps, steps=args.steps,
                       prompts_per_step=args.prompts_per_step, samples_per_prompt=args.samples_per_prompt, lr=args.lr,
                       eval_every=args.eval_every, seeds=args.seeds,
                       mismatch=Mismatch(args.precision, args.noise_prob, args.noise_std, args.staleness))
    return args, config


def main(argv=None) -> int:
    args, config = parse_args(argv)
    histories = run_lab(config, args.methods, args.out, wandb_mode=args.wandb_mode if args.wandb else None)
    print(summary_table(summarize(histories), config))
    print(f"\nwrote {args.out}/summary.md, summary.json, curves.png, runs/*.jsonl, tensorboard/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
