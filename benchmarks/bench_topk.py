"""Benchmark: top-K gather + divergence vs upstream's own log-prob computation on the same logits.

    python benchmarks/bench_topk.py [--batch 2 --length 2048 --vocab 151936 --k 20 --rounds 5]

Baseline: ``openrlhf.models.utils.log_probs_from_logits`` (0.11.2), what upstream's actor forward
runs on its logits. Ours: ``log_probs_with_topk`` (the sampled tokens' and the K top-K ids' log-probs
from one chunked log-normaliser, what the patched forward runs) followed by the top-K TV and KL
divergences and the DPPO mask. Both run on the same float32 logits of the Qwen vocabulary size,
interleaved round by round; the median is reported. Peak memory is the growth of the resident set
(``VmHWM`` after a reset) with glibc mmapping every large block, as in ``bench_loss.py``. Also
reported: the bytes per token the two top-K experience fields add to the replay buffer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench_loss import load_upstream_policy_loss, measure  # noqa: E402

from openrlhf_offpolicy.corrections import DIVERGENCES, make_topk  # noqa: E402
from openrlhf_offpolicy.corrections.dppo import dppo_mask  # noqa: E402
from openrlhf_offpolicy.models.logprobs import log_probs_with_topk  # noqa: E402


def upstream_log_probs():
    load_upstream_policy_loss()  # registers openrlhf.models without its __init__ (CUDA-only imports)
    import importlib

    return importlib.import_module("openrlhf.models.utils").log_probs_from_logits


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args(argv)

    upstream = upstream_log_probs()
    g = torch.Generator().manual_seed(0)
    B, T, V, K = args.batch, args.length, args.vocab, args.k
    logits = torch.randn(B, T, V, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    ids = torch.randint(0, V, (B, T, K), generator=g)
    rollout_topk = torch.log_softmax(torch.randn(B, T, K, generator=g), -1) - 1.0
    rollout_sampled = torch.full((B, T), -1.0)
    advantages = torch.randn(B, 1, generator=g).expand(B, T)

    def baseline():
        return upstream(logits, labels)

    def ours():
        label_lp, topk_lp = log_probs_with_topk(logits, labels, ids)
        topk = make_topk(ids, rollout_topk, topk_lp, labels)
        tv = DIVERGENCES.get("topk_tv").fn(rollout_sampled, label_lp, topk)
        kl = DIVERGENCES.get("topk_kl").fn(rollout_sampled, label_lp, topk)
        mask = dppo_mask(advantages, (label_lp - rollout_sampled).exp(), tv, 0.2)
        return label_lp, tv, kl, mask

    assert torch.allclose(ours()[0], baseline(), atol=1e-4), "the fused gather changed the label log-probs"
    runs = {"upstream log_probs_from_logits": baseline, "ours: log-probs + top-K gather + top-K TV/KL + mask": ours}
    times = {name: [] for name in runs}
    peaks = {name: [] for name in runs}
    for _ in tqdm(range(args.rounds), desc="top-K bench rounds"):
        for name, fn in runs.items():
            t, m = measure(fn)
            times[name].append(t)
            peaks[name].append(m)
    names = list(runs)
    base_t, base_m = statistics.median(times[names[0]]), statistics.median(peaks[names[0]])
    lines = [f"B={B} T={T} V={V} K={K}, float32 logits ({logits.numel() * 4 / 2**30:.2f} GiB), "
             f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds", "",
             "| computation | time ms | time ratio | peak MiB | memory ratio |", "|---|---:|---:|---:|---:|"]
    for name in names:
        t, m = statistics.median(times[name]), statistics.median(peaks[name])
        ratio = m / base_m if base_m else float("nan")
        lines.append(f"| {name} | {t * 1e3:.0f} | {t / base_t:.3f}x | {m / 2**20:.0f} | {ratio:.3f}x |")
    ids_bytes, lps_bytes = 4 * K, 4 * K  # int32 ids, float32 log-probs per action token
    lines += ["", f"Replay buffer: the top-K fields add {ids_bytes + lps_bytes} bytes per token "
              f"({ids_bytes} int32 ids + {lps_bytes} float32 log-probs) at K={K}; upstream's own per-token "
              "fields take about 45 bytes (int64 sequences and attention mask, bool action mask, five float32 "
              "fields)."]
    text = "\n".join(lines)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "topk_bench.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
