"""Exact estimator bench: bias and variance of every correction's gradient estimator.

    python -m openrlhf_offpolicy.lab.estimators [--lengths 1 2 4 6 8 10] [--kls 0.002 0.01 0.05] \
        [--out lab_results/estimators]

On the tabular policy of ``tabular.py`` every (prompt, response) pair is enumerated, so all
expectations are exact sums, not Monte Carlo. For one sequence y ~ mu a method's gradient estimator
is g(y) = sum_t w_t grad log pi_theta(y_t | y_{t-1}), where w_t = -d loss / d log pi_theta(y_t) is
read off the project's real ``PolicyLoss`` by autograd (advantage A(y) = R(y) - E_mu[R], summed
over tokens). The bench reports, per method, response length T and mismatch KL(mu || pi):
    bias      ||E_mu[g] - grad J|| / ||grad J||     with grad J = E_pi[(R - E_pi R) grad log pi(y)]
    variance  E_mu||g - E_mu g||^2 / ||grad J||^2  (trace of the covariance)
    cosine    cos(E_mu[g], grad J)
    accept    E_mu[fraction of tokens whose gradient weight is non-zero]
Theory it confirms (tests/lab/test_estimators.py): untruncated sequence IS is exactly unbiased;
token-level IS is biased and the bias grows with T; sequence-IS variance grows exponentially with
T; Seq-MIS acceptance falls with T while Geo-Mask's does not; TRM-Max acceptance follows
(1 - p)^T while TRM-Avg's does not.
"""

from __future__ import annotations

import argparse
import csv
import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from ..corrections import resolve_config
from ..models import PolicyLoss
from ..presets import registered_presets
from .tabular import (
    DTYPE,
    MismatchProblem,
    enumerate_sequences,
    make_problem,
    score_function,
    sequence_probs,
    target_token_reward,
    token_log_probs,
)

UNBOUNDED = (0.0, 1e6)  # an IS band that never binds in these problems


def _plain_is(correction: str) -> dict:
    return dict(enable_vllm_is_correction=True, vllm_is_correction_type=correction,
                vllm_is_truncated_threshold=UNBOUNDED)


# The references every correction is measured against: no correction, and the untruncated token- and
# sequence-level IS estimators (a registered correction whose band never binds).
REFERENCES: Dict[str, dict] = {"no correction": {}, "token IS": _plain_is("tis"), "seq IS": _plain_is("seq-tis")}


def exact_bench_supports(kwargs: dict) -> bool:
    """The tabular problem has no top-K log-probs to give a top-K divergence."""
    return not resolve_config(**kwargs).needs_topk


# label -> PolicyLoss kwargs: the references, then every registered method's preset (the paper's values),
# derived from the registry.
METHODS: Dict[str, dict] = {**REFERENCES, **{name: kwargs for name, kwargs in registered_presets().items()
                                             if exact_bench_supports(kwargs)}}
# (geo_mask and seq_mask_tis are choices too; their presets' bands, sized for LLM mismatch, reject every sequence here)
DEFAULT_METHODS = [*REFERENCES, "tis", "icepop", "seq_tis", "seq_mis", "reinforce_pro", "trm", "trm_avg", "dppo"]


@dataclass
class EstimatorStats:
    method: str
    length: int
    kl: float
    bias: float
    variance: float
    cosine: float
    accept: float
    mse: float


def policy_loss(kwargs: dict) -> PolicyLoss:
    return PolicyLoss(**kwargs)


@dataclass
class ExactProblem:
    """One mismatch problem at one length, with everything the estimators need precomputed."""

    problem: MismatchProblem
    vocab: int
    length: int

    def __post_init__(self):
        p = self.problem
        self.seqs = enumerate_sequences(self.vocab, self.length)
        self.log_pi = token_log_probs(p.pi_logits, self.seqs)
        self.log_mu = token_log_probs(p.mu_logits, self.seqs)
        self.p_pi = sequence_probs(p.pi_logits, self.seqs, p.prompt_dist)
        self.p_mu = sequence_probs(p.mu_logits, self.seqs, p.prompt_dist)
        self.reward = target_token_reward(self.seqs)
        self.advantage = self.reward - (self.p_mu * self.reward).sum()
        centred = self.reward - (self.p_pi * self.reward).sum()
        ones = torch.ones_like(self.log_pi)
        self.true_grad = ((self.p_pi * centred)[:, None, None] * score_function(p.pi_logits, self.seqs, ones)).sum(0)

    def gradient_weights(self, loss_fn: PolicyLoss) -> torch.Tensor:
        """w_t = -d loss / d log pi_theta(y_t), each sequence's loss summed over its tokens."""
        log_probs = self.log_pi.clone().requires_grad_()
        n_seq, length = log_probs.shape
        advantages = self.advantage.unsqueeze(1).expand(n_seq, length)
        # Normalisers that turn either aggregation mode into a plain sum over all tokens.
        loss = loss_fn(log_probs, self.log_pi, advantages, action_mask=torch.ones_like(log_probs),
                       rollout_log_probs=self.log_mu, batch_num_tokens=1.0, global_batch_size=1.0 / length)[0]
        loss.backward()
        return -log_probs.grad

    def evaluate(self, label: str, loss_fn: PolicyLoss) -> EstimatorStats:
        weights = self.gradient_weights(loss_fn)
        per_seq = score_function(self.problem.pi_logits, self.seqs, weights)
        mean = (self.p_mu[:, None, None] * per_seq).sum(0)
        second = (self.p_mu * per_seq.pow(2).sum(dim=(1, 2))).sum()
        scale = self.true_grad.pow(2).sum()
        bias2 = (mean - self.true_grad).pow(2).sum()
        variance = (second - mean.pow(2).sum()).clamp(min=0.0)
        cosine = (mean * self.true_grad).sum() / (mean.norm() * self.true_grad.norm()).clamp(min=1e-300)
        accept = (self.p_mu * (weights != 0).to(DTYPE).mean(dim=-1)).sum()
        return EstimatorStats(label, self.length, self.problem.target_kl, float((bias2 / scale).sqrt()),
                              float(variance / scale), float(cosine), float(accept), float((bias2 + variance) / scale))


def run_bench(lengths: Sequence[int], kls: Sequence[float], methods: Optional[Dict[str, dict]] = None,
              vocab: int = 3, seed: int = 0, markov: bool = True, sharpness: float = 1.5,
              progress: bool = True) -> List[EstimatorStats]:
    methods = {label: METHODS[label] for label in DEFAULT_METHODS} if methods is None else methods
    modules = {label: policy_loss(kwargs) for label, kwargs in methods.items()}
    results: List[EstimatorStats] = []
    grid = [(kl, T) for kl in kls for T in lengths]
    for kl, length in tqdm(grid, desc="estimator bench", disable=not progress):
        problem = make_problem(vocab=vocab, target_kl=kl, seed=seed, markov=markov, sharpness=sharpness)
        exact = ExactProblem(problem, vocab, length)
        results += [exact.evaluate(label, module) for label, module in modules.items()]
    return results


def write_outputs(results: List[EstimatorStats], out_dir: str, kl_for_plots: float) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "estimators.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(results[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in results)
    with open(os.path.join(out_dir, "estimators.md"), "w") as f:
        f.write(markdown_table(results, kl_for_plots) + "\n")
    plot(results, kl_for_plots, os.path.join(out_dir, "estimators.png"))


def markdown_table(results: List[EstimatorStats], kl: float) -> str:
    rows = [r for r in results if r.kl == kl]
    lengths = sorted({r.length for r in rows})
    longest = max(lengths)
    methods = list(dict.fromkeys(r.method for r in rows))
    by = {(r.method, r.length): r for r in rows}
    header = (f"Exact estimator bench, per-token KL(mu||pi) = {kl}; bias and variance relative to ||grad J|| "
              f"(variance over one sequence), at T = {lengths[0]} .. {longest}\n\n")
    lines = ["| method | " + " | ".join(f"bias T={t}" for t in lengths) + f" | variance T={longest} | "
             f"cosine T={longest} | accept T={longest} |",
             "|---|" + "---:|" * (len(lengths) + 3)]
    for m in methods:
        biases = " | ".join(f"{by[(m, t)].bias:.3f}" for t in lengths)
        last = by[(m, longest)]
        lines.append(f"| {m} | {biases} | {last.variance:.3g} | {last.cosine:.3f} | {last.accept:.3f} |")
    return header + "\n".join(lines)


def t1_caption(results: List[EstimatorStats], kl: float) -> str:
    """Why the band masks spike at T = 1 (read off the results, so the numbers are this run's)."""
    rows = [r for r in results if r.kl == kl and r.length == min(x.length for x in results)]
    worst = max(rows, key=lambda r: r.bias)
    tied = [r.method for r in rows if r.bias > worst.bias - 0.01]
    return (f"T = {worst.length}: {', '.join(tied)} keep{'s' if len(tied) == 1 else ''} {worst.accept:.0%} of the "
            f"tokens yet lose{'s' if len(tied) == 1 else ''} {worst.bias:.0%} of grad J. A one-token sequence "
            "is masked by that token's own ratio, and the "
            "tokens outside a narrow band are those of the states where pi and mu disagree most, the uncertain "
            "states that carry most of grad J (the near-deterministic state has a tiny gradient). For T >= 2 the "
            "sequence statistic averages log-ratios over tokens, so fewer whole sequences leave the band.")


LINESTYLES = ("-", "--", ":", "-.")
MARKERS = "osD^vP*Xh<>p8"


def method_style(i: int, colors) -> dict:
    """A distinct colour, marker and dash per method; earlier methods are drawn larger and below, so
    identical curves (token IS and tis [0, 2] here) stay visible on top of each other."""
    return dict(marker=MARKERS[i % len(MARKERS)], color=colors[(2 * i) % 20 + (i // 10) % 2],
                linestyle=LINESTYLES[i % len(LINESTYLES)], markersize=max(3.0, 10.0 - 0.6 * i),
                linewidth=max(1.0, 2.8 - 0.15 * i), zorder=i, markerfacecolor="none" if i % 2 else None)


def plot(results: List[EstimatorStats], kl: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.kl == kl]
    methods = list(dict.fromkeys(r.method for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(19, 6.3))
    colors = plt.get_cmap("tab20").colors
    for i, m in enumerate(methods):
        pts = sorted((r for r in rows if r.method == m), key=lambda r: r.length)
        x = [r.length for r in pts]
        style = dict(method_style(i, colors), label=m)
        axes[0].plot(x, [r.bias for r in pts], **style)
        axes[1].plot(x, [r.variance for r in pts], **style)
        axes[2].plot(x, [r.accept for r in pts], **style)
    lowest = min(r.accept for r in rows)
    margin = max(0.01, 0.05 * (1.0 - lowest))
    axes[0].set(title="relative bias", xlabel="response length T", ylabel="||E_mu g - grad J|| / ||grad J||")
    axes[1].set(title="relative variance", xlabel="response length T", ylabel="tr Cov_mu(g) / ||grad J||^2",
                yscale="log")
    axes[2].set(title="accepted token fraction under mu (zoomed)", xlabel="response length T",
                ylabel="E_mu[fraction of tokens with a non-zero weight]", ylim=(lowest - margin, 1.0 + margin))
    axes[2].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"Exact estimator bench (tabular policy, per-token KL(mu||pi) = {kl})")
    fig.text(0.01, 0.01, "\n".join(_wrap(t1_caption(results, kl), 190)), fontsize=8, va="bottom")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _wrap(text: str, width: int) -> List[str]:
    import textwrap

    return textwrap.wrap(text, width)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1, 2, 4, 6, 8, 10], metavar="T",
                        help="response lengths to enumerate (default: 1 2 4 6 8 10; vocab^(T+1) <= 3e6)")
    parser.add_argument("--kls", type=float, nargs="+", default=[0.002, 0.01, 0.05], metavar="KL",
                        help="per-token mismatch sizes KL(mu||pi) (default: 0.002 0.01 0.05; the middle one "
                        "is tabulated and plotted)")
    parser.add_argument("--vocab", type=int, default=3, help="vocabulary size V of the tabular policy (default 3)")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS), metavar="METHOD",
                        help=f"references and registered presets to compare (default: {' '.join(DEFAULT_METHODS)}); "
                        f"choices: {', '.join(METHODS)}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random pi and mismatch tables (default 0)")
    parser.add_argument("--out", default="lab_results/estimators",
                        help="output folder for estimators.csv/.md/.png (default lab_results/estimators)")
    args = parser.parse_args(argv)
    if max(args.lengths) > 12 or args.vocab ** (max(args.lengths) + 1) > 3e6:
        parser.error("vocab^(T+1) sequences must fit in memory: keep T <= 12 and vocab^(T+1) <= 3e6")
    results = run_bench(args.lengths, args.kls, {label: METHODS[label] for label in args.methods},
                        vocab=args.vocab, seed=args.seed)
    kl = args.kls[len(args.kls) // 2]
    write_outputs(results, args.out, kl)
    print(markdown_table(results, kl))
    print(f"\nwrote {args.out}/estimators.csv, estimators.md, estimators.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
