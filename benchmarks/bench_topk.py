"""Benchmark: the rollout's top-K (and sampled-token) log-probs, on the engine and in the trainer.

    python benchmarks/bench_topk.py [--tokens 4096 --k 20 --rounds 15 --batch 1 --length 2048 --vocab 151936]

1. Transport, on the vLLM engine actor, per generated token. The generation's log-probs are built by
   vLLM 0.29's own ``append_logprobs_for_next_position`` from sampler-shaped rows (the sampled token
   then the top-K), as per-token dicts (``flat_logprobs`` off) or ``FlatLogprobs`` (on), and read by
   upstream 0.11.2's real ``SingleTurnAgentExecutor.execute``:
     * baseline: upstream's executor on dicts with ``logprobs=1`` (its own sampled-token extraction,
       one dict lookup per token), what upstream does without this project;
     * ours: the same executor under the project's patch (``topk.with_rollout_arrays``) on flat
       log-probs, with K = 0 (sampled token only) and K = ``--k``;
     * for reference, the per-token dict path at K (what ran before flat log-probs) and upstream's
       executor reading flat log-probs without the patch.
   Times are this process's CPU time (the loop is single-threaded; other jobs on a shared machine do
   not count). Each executor call's fixed cost (the same call on an empty generation) is subtracted. Rounds pair
   each candidate with the baseline back to back; the ratio column is median (interquartile range).
   Targets: at most 1 us per token at K = 20, at most 5x the baseline. Also shown: vLLM's own cost of
   building each container per token (its output processor runs it on the same event loop).
2. Trainer: ``log_probs_with_topk`` (the sampled tokens' and the K ids' log-probs from one
   log-normaliser) + the top-K TV/KL and the DPPO mask, vs upstream's ``log_probs_from_logits`` on the
   same float32 logits of the Qwen vocabulary size: time and resident-set peak ratios.
3. Bytes per token of the two top-K experience fields (int32 ids, float32 log-probs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
import common  # noqa: E402

if not common.mmap_large_blocks():
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

US_PER_TOKEN_TARGET = 1.0
RATIO_TARGET = 5.0


class _Tokenizer:
    def __call__(self, text, add_special_tokens=False, return_tensors="pt"):
        return {"input_ids": torch.tensor([[int(t) for t in text.split()]])}


class _Engine:
    def __init__(self, output):
        self.output = output

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        return self.output


def sampler_rows(n_tokens: int, k: int, vocab: int = 151936, seed: int = 0):
    """``(ids, log-probs, rank)`` per token as vLLM's sampler hands them on: sampled, then top-1..top-k."""
    g = torch.Generator().manual_seed(seed)
    top = torch.log_softmax(torch.randn(n_tokens, k + 8, generator=g) * 3, -1).sort(-1, descending=True).values[:, :k]
    top_ids = torch.randint(0, vocab, (n_tokens, k), generator=g)
    inside = torch.rand(n_tokens, generator=g) < 0.8
    pick = torch.randint(0, k, (n_tokens,), generator=g)
    sampled = torch.where(inside, top_ids[torch.arange(n_tokens), pick], torch.randint(0, vocab, (n_tokens,)))
    sampled_lp = torch.where(inside, top[torch.arange(n_tokens), pick], top[:, -1] - 1.0)
    rank = torch.where(inside, pick + 1, torch.full_like(pick, k + 5))
    return [([int(s)] + ids, [float(lp)] + lps, int(r)) for s, lp, r, ids, lps in
            zip(sampled, sampled_lp, rank, top_ids.tolist(), top.tolist())]


def vllm_logprobs(rows, k: int, flat: bool):
    from vllm.logprobs import append_logprobs_for_next_position, create_sample_logprobs

    logprobs = create_sample_logprobs(flat)
    nones = [None] * (k + 1)
    for ids, lps, rank in rows:
        append_logprobs_for_next_position(logprobs, ids[: k + 1], lps[: k + 1], nones[: len(ids[: k + 1])], rank, k)
    return logprobs


def request_output(token_ids, logprobs):
    from vllm.outputs import CompletionOutput, RequestOutput

    completion = CompletionOutput(index=0, text="", token_ids=token_ids, cumulative_logprob=None, logprobs=logprobs,
                                  finish_reason="stop")
    return RequestOutput("r", None, [1, 2], None, [completion], finished=True)


def transport(args):
    from openrlhf.utils.agent import SingleTurnAgentExecutor
    from vllm import SamplingParams

    from openrlhf_offpolicy.integration.runtime.topk import with_rollout_arrays

    A, K = args.tokens, args.k
    rows = sampler_rows(A, K)
    tokens = [ids[0] for ids, _, _ in rows]
    upstream = SingleTurnAgentExecutor.execute
    executor = SingleTurnAgentExecutor(None)
    loop = asyncio.new_event_loop()

    def call(execute, output, logprobs):
        params = SamplingParams(logprobs=logprobs, max_tokens=A, flat_logprobs=False)
        engine, tok = _Engine(output), _Tokenizer()
        return lambda: loop.run_until_complete(execute(executor, "1 2", "l", params, 1 << 20, tok, engine))

    empty = {flat: request_output([], vllm_logprobs([], K, flat)) for flat in (False, True)}
    dict_1 = request_output(tokens, vllm_logprobs(rows, 1, False))
    flat_1 = request_output(tokens, vllm_logprobs(rows, 1, True))
    dict_k = request_output(tokens, vllm_logprobs(rows, K, False))
    flat_k = request_output(tokens, vllm_logprobs(rows, K, True))
    ours_0, ours_k = with_rollout_arrays(upstream, 0), with_rollout_arrays(upstream, K)
    check = call(ours_k, flat_k, K)()
    assert check["rollout_log_probs"] == call(upstream, dict_k, K)()["rollout_log_probs"]
    assert check["rollout_topk_ids"].shape == (A + 2, K)

    cases = {  # name: (call, the same call on an empty generation)
        "ours, flat log-probs, K=0 (sampled token only)": (call(ours_0, flat_1, 1), call(ours_0, empty[True], 1)),
        f"ours, flat log-probs, K={K}": (call(ours_k, flat_k, K), call(ours_k, empty[True], K)),
        f"per-token dict path, K={K} (before flat log-probs)": (call(ours_k, dict_k, K), call(ours_k, empty[False], K)),
        "upstream's executor reading flat log-probs, K=0 (no patch)": (call(upstream, flat_1, 1),
                                                                        call(upstream, empty[True], 1)),
    }
    baseline_call, baseline_empty = call(upstream, dict_1, 1), call(upstream, empty[False], 1)

    clock = time.process_time  # CPU time of this single-threaded loop: other jobs on the cores do not count
    fixed = {name: statistics.median(common.timed(e, clock) for _ in range(50)) for name, (_, e) in cases.items()}
    base_fixed = statistics.median(common.timed(baseline_empty, clock) for _ in range(50))
    per_token, ratios = {name: [] for name in cases}, {name: [] for name in cases}
    base_per_token = []
    for fn, _ in (*cases.values(), (baseline_call, None)):
        fn()
    for r in tqdm(range(args.rounds), desc="top-K transport rounds"):
        for name, (fn, _) in cases.items():
            if r % 2:
                tb, tf = common.timed(baseline_call, clock), common.timed(fn, clock)
            else:
                tf, tb = common.timed(fn, clock), common.timed(baseline_call, clock)
            ours_us = max(tf - fixed[name], 0.0) / A * 1e6
            base_us = max(tb - base_fixed, 1e-9) / A * 1e6
            per_token[name].append(ours_us)
            ratios[name].append(ours_us / base_us)
            base_per_token.append(base_us)

    build = {}
    for flat in (False, True):
        build[flat] = statistics.median(common.timed(lambda: vllm_logprobs(rows, K, flat), clock)
                                        for _ in range(3)) / A * 1e6
    loop.close()

    target_name = f"ours, flat log-probs, K={K}"
    dict_path = statistics.median(per_token[f"per-token dict path, K={K} (before flat log-probs)"])
    lines = [f"## Transport on the engine actor: {A} generated tokens, K={K}", "",
             f"baseline: upstream 0.11.2 `SingleTurnAgentExecutor.execute` on vLLM's per-token dicts, logprobs=1: "
             f"{statistics.median(base_per_token):.3f} us per token (median)", "",
             "| path | us per token (median) | ratio to baseline: median (IQR) | targets |", "|---|---:|---:|---|"]
    misses = []
    for name in cases:
        us = statistics.median(per_token[name])
        targets = ""
        if name == target_name:
            targets = f"<= {US_PER_TOKEN_TARGET:g} us, <= {RATIO_TARGET:g}x"
            if us > US_PER_TOKEN_TARGET:
                misses.append(f"top-K transport {us:.2f} us/token > {US_PER_TOKEN_TARGET:g}")
            if common.is_miss(ratios[name], RATIO_TARGET):
                misses.append(f"top-K transport {statistics.median(ratios[name]):.1f}x upstream's extraction "
                              f"> {RATIO_TARGET:g}x")
        mark = " **MISS**" if name == target_name and us > US_PER_TOKEN_TARGET else ""
        lines.append(f"| {name} | {us:.3f}{mark} | "
                     f"{common.ratio_cell(ratios[name], RATIO_TARGET if name == target_name else None)} | "
                     f"{targets} |")
    lines += ["", f"vLLM's own cost of building the container it returns (its output processor, same event loop), "
              f"K={K}: per-token dicts {build[False]:.2f} us per token, FlatLogprobs {build[True]:.2f} us per token.",
              f"Engine-side total per token at K={K}: dicts + per-token path "
              f"{build[False] + dict_path:.2f}"
              f" us; flat + ours {build[True] + statistics.median(per_token[target_name]):.2f} us."]
    summary = [f"top-K transport K={K}: {statistics.median(per_token[target_name]):.3f} us/token, "
               f"{common.ratio_cell(ratios[target_name], RATIO_TARGET)} upstream's per-token extraction "
               f"({statistics.median(base_per_token):.3f} us/token); per-token dict path {dict_path:.2f} us/token"]
    return lines, misses, summary


def trainer_gather(args):
    from openrlhf_offpolicy.corrections import DIVERGENCES, make_topk
    from openrlhf_offpolicy.corrections.dppo import dppo_mask
    from openrlhf_offpolicy.models.logprobs import log_probs_with_topk

    sys.path.insert(0, HERE)
    from bench_loss import load_upstream_policy_loss

    load_upstream_policy_loss()  # registers openrlhf.models without its __init__ (CUDA-only imports)
    import importlib

    upstream = importlib.import_module("openrlhf.models.utils").log_probs_from_logits
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
    name = "log-probs + top-K gather + top-K TV/KL + DPPO mask"
    ratios, times, base_times = common.paired_ratios({name: ours}, baseline, args.gather_rounds,
                                                     progress=lambda it: tqdm(it, desc="top-K gather rounds"))
    base_m = statistics.median(common.peak_memory(baseline) for _ in range(3))
    ours_m = statistics.median(common.peak_memory(ours) for _ in range(3))
    lines = ["", f"## Trainer: B={B} T={T} V={V} K={K}, float32 logits ({logits.numel() * 4 / 2**30:.2f} GiB), "
             f"{torch.get_num_threads()} threads, {args.gather_rounds} paired rounds", "",
             "| computation | ms (median) | time ratio: median (IQR) | peak MiB | memory ratio |",
             "|---|---:|---:|---:|---:|",
             f"| upstream log_probs_from_logits | {statistics.median(base_times) * 1e3:.0f} | 1 | {base_m / 2**20:.0f} "
             f"| 1 |",
             f"| {name} | {statistics.median(times[name]) * 1e3:.0f} | {common.ratio_cell(ratios[name])} | "
             f"{ours_m / 2**20:.0f} | {ours_m / max(base_m, 1):.3f}x |"]
    bytes_token = 8 * K
    lines += ["", f"Replay buffer: the top-K fields add {bytes_token} bytes per token ({4 * K} int32 ids + {4 * K} "
              f"float32 log-probs) at K={K}; upstream's own per-token fields take about 45 bytes."]
    summary = [f"top-K trainer gather: {common.ratio_cell(ratios[name])} time, {ours_m / max(base_m, 1):.2f}x memory "
               f"of upstream's log_probs_from_logits"]
    return lines, summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096, help="generated tokens per rollout (transport)")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15, help="transport rounds")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--gather_rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    before = common.load_average()
    lines, misses, summary = transport(args)
    gather_lines, gather_summary = trainer_gather(args)
    header = [f"load average before {before}, after {common.load_average()}", ""]
    common.write_results(args.out, "topk_bench", "\n".join(header + lines + gather_lines), misses,
                         summary + gather_summary)


if __name__ == "__main__":
    main()
