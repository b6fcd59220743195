"""Benchmark: what ``--match_rollout_sampling``'s truncated log-probs keep for backward, against the
untruncated path on the same logits.

    python benchmarks/bench_truncation_memory.py [--tokens 2048 --vocab 32000 --top_p 0.9 --rounds 3]

Both runs are ``models.logprobs.log_probs_with_topk`` on the same float32 ``[tokens, vocab]`` logits
(a realistic 16k-token x 152k-vocabulary step scaled down to fit this machine), forward + backward:
  * saved bytes: what autograd keeps between forward and backward (``saved_tensor_bytes``: every
    storage a saved tensor points at, once; exact and deterministic). The untruncated path keeps
    the logits; the truncated one must keep at most 1.1x that (tests/models/test_logprobs.py);
  * peak: the growth of the resident set during forward + backward (Linux ``VmHWM`` after a
    reset, glibc mmapping every large block), median and range over interleaved rounds;
  * time: median and range over the same rounds.
Ratios are truncated / untruncated, in the same run. Results: Markdown on stdout and
``truncation_memory.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time

if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from openrlhf_offpolicy.models.logprobs import Truncation, log_probs_with_topk, saved_tensor_bytes  # noqa: E402


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1))


def forward_backward(logits, labels, truncation):
    leaf = logits.detach().requires_grad_()
    label_lp, _ = log_probs_with_topk(leaf, labels, truncation=truncation)
    label_lp[torch.isfinite(label_lp)].sum().backward()
    return leaf.grad


def peak_and_time(logits, labels, truncation):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident set
    base = _kib("VmRSS")
    start = time.perf_counter()
    grad = forward_backward(logits, labels, truncation)
    elapsed = time.perf_counter() - start
    peak = (_kib("VmHWM") - base) * 1024
    del grad
    return peak, elapsed


def spread(values, scale=1.0, fmt="{:.0f}"):
    values = [v * scale for v in values]
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--top_p", type=float, default=0.9)
    parser.add_argument("--top_k", type=int, default=-1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args(argv)

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(args.tokens, args.vocab, generator=g) * 2.5).bfloat16().float()
    labels = torch.randint(0, args.vocab, (args.tokens,), generator=g)
    truncation = Truncation(top_k=args.top_k, top_p=args.top_p)
    runs = {"untruncated": None, f"truncated ({truncation})": truncation}

    saved = {}
    for name, trunc in runs.items():
        leaf = logits.detach().requires_grad_()
        saved[name] = saved_tensor_bytes(lambda: log_probs_with_topk(leaf, labels, truncation=trunc)[0].sum())
    peaks = {name: [] for name in runs}
    times = {name: [] for name in runs}
    for _ in tqdm(range(args.rounds), desc="truncation memory rounds"):
        for name, trunc in runs.items():
            peak, elapsed = peak_and_time(logits, labels, trunc)
            peaks[name].append(peak)
            times[name].append(elapsed)

    base = list(runs)[0]
    lines = [f"{args.tokens} tokens x {args.vocab} vocabulary, float32 logits "
             f"({logits.numel() * 4 / 2**20:.0f} MiB), {torch.get_num_threads()} threads, "
             f"median [min, max] of {args.rounds} interleaved rounds", "",
             "| path | saved for backward MiB | saved ratio | peak fwd+bwd MiB | peak ratio | time ms | time ratio |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in runs:
        peak_ratio = [p / b for p, b in zip(peaks[name], peaks[base])]
        time_ratio = [t / b for t, b in zip(times[name], times[base])]
        lines.append(f"| {name} | {saved[name] / 2**20:.1f} | {saved[name] / saved[base]:.3f}x | "
                     f"{spread(peaks[name], 2**-20)} | {spread(peak_ratio, fmt='{:.2f}')}x | "
                     f"{spread(times[name], 1e3)} | {spread(time_ratio, fmt='{:.2f}')}x |")
    lines += ["", f"saved-bytes ratio (truncated / untruncated): {saved[list(runs)[1]] / saved[base]:.3f}"]
    text = "\n".join(lines)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "truncation_memory.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
