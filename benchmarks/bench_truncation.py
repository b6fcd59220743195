"""Benchmark: backward memory and time of ``--match_rollout_sampling``'s truncated log-probs.

    python benchmarks/bench_truncation.py [--length 256 --vocab 151936 --rounds 3]

The trainer's log-prob kernel (``models.logprobs.log_probs_with_topk``) on float32 logits that
require a gradient, as the actor's lm-head output does: forward, then backward of the summed label
log-probs. Baseline: the same kernel without truncation (what the trainer runs when the rollout
samples the full distribution). Candidates: vLLM-style truncations (top-p, top-k, min-p, all three).
Printed per case: the resident-set peak growth during forward+backward (``VmHWM`` after a reset,
glibc mmapping every large block) and its ratio to the baseline's, against the end-to-end issue's
target of at most 1.1x, and the time ratio (median and interquartile range over paired rounds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
import common  # noqa: E402

if not common.mmap_large_blocks():
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from openrlhf_offpolicy.models.logprobs import Truncation, log_probs_with_topk  # noqa: E402

MEMORY_TARGET = 1.1
CASES = {
    "top_p=0.95": Truncation(top_p=0.95),
    "top_k=50": Truncation(top_k=50),
    "min_p=0.05": Truncation(min_p=0.05),
    "top_k=50 top_p=0.95 min_p=0.05": Truncation(top_k=50, top_p=0.95, min_p=0.05),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=256, help="positions (batch x sequence) of one micro-batch")
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    before = common.load_average()
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(1, args.length, args.vocab, generator=g) * 3).requires_grad_()
    labels = torch.randint(0, args.vocab, (1, args.length), generator=g)

    def step(truncation):
        def run():
            logits.grad = None
            label_lp, _ = log_probs_with_topk(logits, labels, truncation=truncation)
            label_lp.masked_fill(~torch.isfinite(label_lp), 0.0).sum().backward()
            return None

        return run

    baseline = step(None)
    candidates = {name: step(t) for name, t in CASES.items()}
    ratios, times, base_times = common.paired_ratios(candidates, baseline, args.rounds,
                                                     progress=lambda it: tqdm(it, desc="truncation rounds"))
    base_m = statistics.median(common.peak_memory(baseline) for _ in range(2))
    memory = {name: statistics.median(common.peak_memory(fn) for _ in range(2)) for name, fn in candidates.items()}
    lines = [f"load average before {before}, after {common.load_average()}", "",
             f"log-probs of {args.length} positions over V={args.vocab} (float32 logits "
             f"{logits.numel() * 4 / 2**20:.0f} MiB, requiring grad), forward + backward, "
             f"{torch.get_num_threads()} thread, {args.rounds} paired rounds", "",
             "| truncation | peak MiB | memory / untruncated | target | ms (median) | time ratio: median (IQR) |",
             "|---|---:|---:|---:|---:|---:|",
             f"| none (baseline) | {base_m / 2**20:.0f} | 1 | | {statistics.median(base_times) * 1e3:.0f} | 1 |"]
    misses, summary = [], []
    for name in CASES:
        ratio = memory[name] / max(base_m, 1)
        miss = ratio > MEMORY_TARGET
        if miss:
            misses.append(f"--match_rollout_sampling {name}: {ratio:.2f}x the untruncated backward memory "
                          f"> {MEMORY_TARGET}x")
        lines.append(f"| {name} | {memory[name] / 2**20:.0f} | {ratio:.2f}x{' **MISS**' if miss else ''} | "
                     f"<= {MEMORY_TARGET}x | {statistics.median(times[name]) * 1e3:.0f} | "
                     f"{common.ratio_cell(ratios[name])} |")
        summary.append(f"--match_rollout_sampling {name}: memory {ratio:.2f}x, time "
                       f"{common.ratio_cell(ratios[name])} of the untruncated backward")
    common.write_results(args.out, "truncation_bench", "\n".join(lines), misses, summary)


if __name__ == "__main__":
    main()
