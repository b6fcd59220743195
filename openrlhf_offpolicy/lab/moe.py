"""MoE routing lab: a tiny MoE policy whose rollout engine routes differently from its trainer.

    python -m openrlhf_offpolicy.lab.moe [--router-noise 1.0] [--steps 24] [--seeds 0 1 2] \
        [--methods "no correction" tis r3 "r3 + tis"] [--out lab_results/moe]

The policy is a tiny random Hugging Face Qwen3-MoE (built from a config, warmed up with a short
supervised phase on the digit task of ``task.py``). The rollout engine holds the trainer's current
weights (no staleness, float32) and differs in one way only: its routers choose their top-k
experts from logits with Gaussian noise (std ``--router-noise``, fixed per sample, position and
layer), the gate weights then follow the model's own rule at the chosen experts. This stands in for
the rollout engine's numerics flipping a router's choice. Like vLLM with
``enable_return_routed_experts``, the engine returns the experts it used.

Methods (each uses the project's real ``PolicyLoss``):
  * no correction: the trainer routes with its own routers;
  * tis: the same plus token-level truncated IS on pi_old / pi_roll, band [0, 2];
  * r3: both trainer forwards replay the engine's routing (``models/routing_replay.py``);
  * r3 + tis: both;
  * no mismatch (control): an engine without router noise.
Per step: rollout reward (the engine's samples), ``routing/flip_rate`` (the fraction of
(response-scoring position, layer) pairs where the trainer's own top-k set differs from the
engine's, measured on the old-log-prob forward at the trainer's current weights), the mismatch KL
k3 between pi_roll and the trainer's pi_old, and every ``evaluate_every`` steps the greedy reward
of the trainer's policy routed by its own routers (the policy one would deploy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch
from tqdm import tqdm

from ..compare import mean_and_se
from ..models import PolicyLoss
from ..models.routing_replay import GATE_RULES, RoutingReplay, find_routers
from .engines import group_advantages
from .task import DigitTask

CONTROL = "no mismatch (control)"
METHODS: Dict[str, dict] = {
    CONTROL: dict(replay=False, loss={}),
    "no correction": dict(replay=False, loss={}),
    "tis": dict(replay=False, loss=dict(enable_vllm_is_correction=True, vllm_is_correction_type="tis",
                                        vllm_is_truncated_threshold=(0.0, 2.0))),
    "r3": dict(replay=True, loss={}),
    "r3 + tis": dict(replay=True, loss=dict(enable_vllm_is_correction=True, vllm_is_correction_type="tis",
                                            vllm_is_truncated_threshold=(0.0, 2.0))),
}
DEFAULT_METHODS = list(METHODS)


@dataclass
class MoELabConfig:
    task: str = "cumsum"
    prompt_len: int = 4
    router_noise: float = 1.0
    warmup_steps: int = 60
    steps: int = 24
    prompts_per_step: int = 8
    samples_per_prompt: int = 8
    lr: float = 5e-4
    evaluate_every: int = 10
    eval_prompts: int = 256
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    layers: int = 2
    experts: int = 6
    top_k: int = 2
    hidden: int = 32

    def task_obj(self) -> DigitTask:
        return DigitTask(prompt_len=self.prompt_len, kind=self.task)


def tiny_moe_policy(config: MoELabConfig, seed: int = 0) -> torch.nn.Module:
    """A tiny random Qwen3-MoE causal LM over the digit vocabulary (12 tokens)."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    hf_config = Qwen3MoeConfig(vocab_size=12, hidden_size=config.hidden, intermediate_size=2 * config.hidden,
                               moe_intermediate_size=config.hidden, num_hidden_layers=config.layers,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=config.hidden // 4,
                               num_experts=config.experts, num_experts_per_tok=config.top_k, norm_topk_prob=True,
                               max_position_embeddings=64, tie_word_embeddings=False)
    hf_config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(hf_config)
    with torch.no_grad():
        for router in find_routers(model):
            router.weight.normal_(0.0, 1.0 / config.hidden ** 0.5)
    return model


def logits_of(model, inputs: torch.Tensor) -> torch.Tensor:
    return model(inputs).logits.float()


def token_log_probs(model, sequences: torch.Tensor, first: int) -> torch.Tensor:
    """log pi(x_t | x_<t) for t >= first, ``[N, T - first]``."""
    logits = logits_of(model, sequences[:, :-1])[:, first - 1:]
    return torch.log_softmax(logits, -1).gather(-1, sequences[:, first:, None]).squeeze(-1)


class NoisyRouters:
    """Router noise for the engine: top-k chosen from ``logits + noise[sample, position, layer]``."""

    def __init__(self, model, std: float):
        self.routers = find_routers(model)
        self.layer_of = {id(r): i for i, r in enumerate(self.routers)}
        self.std, self.noise = std, None
        self.handles = [r.register_forward_hook(self._hook, prepend=True) for r in self.routers]

    def draw(self, n: int, length: int, generator: torch.Generator) -> None:
        experts = self.routers[0].num_experts
        self.noise = torch.randn(n, length, len(self.routers), experts, generator=generator) * self.std

    def _hook(self, router, inputs, output):
        if self.noise is None or self.std == 0:
            return None
        logits, _, _ = output
        n, length = self.noise.shape[0], logits.shape[0] // self.noise.shape[0]
        noise = self.noise[:, :length, self.layer_of[id(router)]].reshape(n * length, -1)
        choice = (logits.float() + noise).topk(router.top_k, dim=-1).indices
        return logits, GATE_RULES[type(router).__name__](router, logits, choice), choice


class Engine:
    """Samples responses with router noise; returns pi_roll log-probs and the routing it used."""

    def __init__(self, config: MoELabConfig, router_noise: float, seed: int):
        self.model = tiny_moe_policy(config).eval()
        self.noisy = NoisyRouters(self.model, router_noise)
        self.recorder = RoutingReplay.attach(self.model)
        self.generator = torch.Generator().manual_seed(seed)
        self.task = config.task_obj()

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, n_samples: int):
        sequences = prompts.repeat_interleave(n_samples, dim=0)
        self.noisy.draw(sequences.shape[0], self.task.seq_len, self.generator)
        log_probs = []
        for _ in range(self.task.prompt_len):
            dist = torch.log_softmax(logits_of(self.model, sequences)[:, -1], -1)
            token = torch.multinomial(dist.exp(), 1, generator=self.generator)
            log_probs.append(dist.gather(-1, token).squeeze(-1))
            sequences = torch.cat([sequences, token], dim=1)
        with self.recorder.record():  # the routing of every model input (vLLM's routed_experts)
            logits_of(self.model, sequences[:, :-1])
        return sequences, torch.stack(log_probs, 1), self.recorder.recorded()


def supervised_warmup(config: MoELabConfig, steps: int, seed: int = 0) -> Dict[str, torch.Tensor]:
    task = config.task_obj()
    model = tiny_moe_policy(config, seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        sequences = task.full_sequences(task.prompts(128, generator))
        loss = -token_log_probs(model, sequences, task.prompt_len + 1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def greedy_reward(model, task: DigitTask, prompts: torch.Tensor) -> float:
    sequences = prompts
    for _ in range(task.prompt_len):
        sequences = torch.cat([sequences, logits_of(model, sequences)[:, -1].argmax(-1, keepdim=True)], 1)
    return float(task.rewards(prompts, sequences[:, prompts.shape[1]:]).mean())


def run_method(label: str, seed: int, config: MoELabConfig, warm_state, on_step=None) -> List[dict]:
    method, task = METHODS[label], config.task_obj()
    first = task.prompt_len + 1  # index of the first response token
    engine = Engine(config, 0.0 if label == CONTROL else config.router_noise, seed=1000 + seed)
    model = tiny_moe_policy(config)
    model.load_state_dict(warm_state)
    controller = RoutingReplay.attach(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = PolicyLoss(**method["loss"])
    prompt_gen = torch.Generator().manual_seed(seed)
    eval_prompts = task.prompts(config.eval_prompts, torch.Generator().manual_seed(12345))
    history = []
    for step in range(config.steps):
        engine.model.load_state_dict(model.state_dict())
        sequences, rollout_lp, routed = engine.generate(task.prompts(config.prompts_per_step, prompt_gen),
                                                        config.samples_per_prompt)
        n, length = sequences.shape[0], sequences.shape[1] - 1
        scoring = torch.zeros(n, length, dtype=torch.bool)
        scoring[:, first - 1:] = True
        scoring = scoring.flatten()
        with torch.no_grad():
            with controller.record():
                own_lp = token_log_probs(model, sequences, first)
            own = controller.recorded()
            flipped = (own.sort(-1).values != routed.sort(-1).values).any(-1)[scoring]
            flip_rate = float(flipped.float().mean())
            if method["replay"]:
                with controller.replay(routed):
                    old_lp = token_log_probs(model, sequences, first)
            else:
                old_lp = own_lp
        advantages = group_advantages(engine.task.rewards(sequences[:, :first], sequences[:, first:]),
                                      config.samples_per_prompt).unsqueeze(1).expand_as(old_lp)
        mask = torch.ones_like(old_lp)
        optimizer.zero_grad()
        if method["replay"]:
            with controller.replay(routed):
                log_probs = token_log_probs(model, sequences, first)
        else:
            log_probs = token_log_probs(model, sequences, first)
        loss, *_ = loss_fn(log_probs, old_lp, advantages, action_mask=mask, rollout_log_probs=rollout_lp,
                           batch_num_tokens=mask.sum(), global_batch_size=float(n))
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        record = {"step": step, "reward": float(task.rewards(sequences[:, :first], sequences[:, first:]).mean()),
                  "routing/flip_rate": flip_rate, "grad_norm": float(grad_norm),
                  **{k: float(v) for k, v in loss_fn.metrics.items()}}
        if step % config.evaluate_every == 0 or step == config.steps - 1:
            record["eval_reward"] = greedy_reward(model, task, eval_prompts)
        history.append(record)
        if on_step is not None:
            on_step(record)
    return history


def summarize(histories: Dict[str, List[List[dict]]]) -> List[dict]:
    """One row per method; each statistic per seed, then mean and standard error over seeds."""
    from .train import final_evals

    rows = []
    for label, runs in histories.items():
        row: dict = {"method": label, "seeds": len(runs)}

        def over_seeds(name, fn):
            row[name], row[f"{name}_se"] = mean_and_se([fn(run) for run in runs])

        over_seeds("reward_first", lambda run: statistics.fmean(r["reward"] for r in run[:5]))
        over_seeds("reward_final", lambda run: statistics.fmean(r["reward"] for r in run[-10:]))
        over_seeds("eval_final", lambda run: final_evals(run, k=1)[-1])
        over_seeds("flip_rate", lambda run: statistics.fmean(r["routing/flip_rate"] for r in run))
        over_seeds("mismatch_k3", lambda run: statistics.fmean(r.get("mismatch/k3", 0.0) for r in run))
        rows.append(row)
    return rows


def summary_table(rows: List[dict], config: MoELabConfig) -> str:
    from .train import pm

    head = (f"MoE routing lab: tiny Qwen3-MoE ({config.layers} MoE layers, top-{config.top_k} of {config.experts} "
            f"experts), task {config.task} ({config.prompt_len} digits, graded reward), {config.steps} steps of "
            f"{config.prompts_per_step}x{config.samples_per_prompt} samples, lr {config.lr}; rollout engine: router "
            f"logit noise std {config.router_noise}. Rollout reward: mean of the first 5 / last 10 steps; eval: "
            f"greedy reward of the trainer's own-routed policy at the last step; flip rate and mismatch k3 (pi_roll "
            f"vs the pi_old the loss used): mean over steps. Every value: mean ± standard error over "
            f"{len(config.seeds)} seed(s).\n\n")
    lines = ["| method | rollout reward start | rollout reward final | eval final | routing/flip_rate | mismatch k3 |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {pm(r, 'reward_first')} | {pm(r, 'reward_final')} | {pm(r, 'eval_final')} | "
                     f"{pm(r, 'flip_rate')} | {pm(r, 'mismatch_k3', 4)} |")
    return head + "\n".join(lines)


def identical_to(curves: Dict[str, List[float]]) -> Dict[str, str]:
    """method -> the earlier method whose curves it equals exactly (its line would hide under that one)."""
    out: Dict[str, str] = {}
    labels = list(curves)
    for i, label in enumerate(labels):
        for earlier in labels[:i]:
            if earlier not in out and curves[earlier] == curves[label]:
                out[label] = earlier
                break
    return out


def plot_curves(histories: Dict[str, List[List[dict]]], config: MoELabConfig, path: str) -> None:
    """Four panels: rollout reward, flip rate, mismatch k3, greedy eval (band: ± 1 s.e. over seeds). A method
    whose curves equal an earlier one's is drawn dotted on top and its legend entry says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def mean_curve(runs, key):
        return [statistics.fmean(vals) for vals in zip(*[[r.get(key, 0.0) for r in run] for run in runs])]

    keys = ("reward", "routing/flip_rate", "mismatch/k3", "eval_reward")
    same = identical_to({label: [v for k in keys for v in mean_curve(runs, k)] for label, runs in histories.items()})
    fig, axes = plt.subplots(1, 4, figsize=(22, 5))
    for i, (label, runs) in enumerate(histories.items()):
        style = dict(linestyle="--", color="black") if label == CONTROL else {}
        if label in same:
            style.update(linestyle=":", linewidth=2.5)
            label = f"{label} (identical to {same[label]})"
        line, = axes[0].plot(_smooth(mean_curve(runs, "reward")), label=label, **style)
        style.setdefault("color", line.get_color())
        axes[1].plot(_smooth(mean_curve(runs, "routing/flip_rate")), label=label, **style)
        axes[2].plot(_smooth(mean_curve(runs, "mismatch/k3")), label=label, **style)
        steps = [r["step"] for r in runs[0] if "eval_reward" in r]
        stats = [mean_and_se(v) for v in zip(*[[r["eval_reward"] for r in run if "eval_reward" in r] for run in runs])]
        axes[3].plot(steps, [m for m, _ in stats], marker=".", label=label, **style)
        if len(runs) > 1:
            axes[3].fill_between(steps, [m - e for m, e in stats], [m + e for m, e in stats], color=style["color"],
                                 alpha=0.15, linewidth=0)
    axes[0].set(title="rollout reward (engine samples, smoothed)", xlabel="step", ylabel="reward", ylim=(0, 1.02))
    axes[1].set(title="routing/flip_rate: trainer top-k != engine top-k", xlabel="step",
                ylabel="fraction of (token, layer) pairs", ylim=(0, 1.0))
    axes[2].set_yscale("symlog", linthresh=1e-4)  # linear near 0: R3's exact 0 lies on the axis
    axes[2].set(title="mismatch KL(pi_roll || pi_old), k3 (smoothed)", xlabel="step",
                ylabel="KL per token (symlog)", ylim=(0, 2.0))
    axes[3].set(title="greedy eval reward (trainer's own routing), band: ± 1 s.e.", xlabel="step", ylabel="reward",
                ylim=(0, 1.02))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"MoE routing lab: router logit noise std {config.router_noise}, mean over "
                 f"{len(config.seeds)} seed(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _smooth(values, width: int = 5):
    return [statistics.fmean(values[max(0, i - width + 1): i + 1]) for i in range(len(values))]


def run_lab(config: MoELabConfig, methods, out_dir: str, progress: bool = True):
    os.makedirs(os.path.join(out_dir, "runs"), exist_ok=True)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    warm_state = supervised_warmup(config, config.warmup_steps)
    histories: Dict[str, List[List[dict]]] = {}
    with tqdm(total=len(methods) * len(config.seeds) * config.steps, desc="MoE routing lab",
              disable=not progress) as bar:
        for label in methods:
            for seed in config.seeds:
                bar.set_postfix_str(f"{label} seed {seed}")
                name = f"{label.replace(' ', '_').replace('+', 'plus')}_seed{seed}"
                with open(os.path.join(out_dir, "runs", f"{name}.jsonl"), "w") as log:
                    def on_step(record, log=log):
                        log.write(json.dumps(record) + "\n")
                        bar.update(1)

                    histories.setdefault(label, []).append(run_method(label, seed, config, warm_state, on_step))
    rows = summarize(histories)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump({"config": asdict(config), "rows": rows}, f, indent=2)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(summary_table(rows, config) + "\n")
    plot_curves(histories, config, os.path.join(out_dir, "curves.png"))
    return histories


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS), metavar="METHOD",
                        help=f"methods to compare, of {', '.join(METHODS)} (default: all)")
    parser.add_argument("--router-noise", type=float, default=MoELabConfig.router_noise,
                        help="std of the rollout engine's router-logit noise (default %(default)s)")
    parser.add_argument("--steps", type=int, default=MoELabConfig.steps,
                        help="RL steps per method and seed (default %(default)s)")
    parser.add_argument("--warmup-steps", type=int, default=MoELabConfig.warmup_steps,
                        help="supervised warm-up steps before RL (default %(default)s)")
    parser.add_argument("--lr", type=float, default=MoELabConfig.lr,
                        help="trainer learning rate (default %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds; tables and curves are means ± s.e. over them (default 0 1 2)")
    parser.add_argument("--out", default="lab_results/moe", help="output folder (default %(default)s)")
    args = parser.parse_args(argv)
    if args.router_noise < 0 or args.steps < 1:
        parser.error("need --router-noise >= 0 and --steps >= 1")
    config = MoELabConfig(router_noise=args.router_noise, steps=args.steps, warmup_steps=args.warmup_steps,
                          lr=args.lr, seeds=args.seeds)
    histories = run_lab(config, args.methods, args.out)
    print(summary_table(summarize(histories), config))
    print(f"\nwrote {args.out}/summary.md, summary.json, curves.png, runs/*.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
