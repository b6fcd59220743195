"""Benchmark: MoE routing replay's forward overhead, and the routing's bytes per token in transport.

    python benchmarks/bench_routing.py [--layers 48 --experts 128 --top_k 8 --hidden 64 --length 256 --rounds 11]

Two identical random Qwen3-MoE models (same weights) with Qwen3-30B-A3B's routing shape by default
(48 MoE layers, top-8 of 128 experts; a small hidden size so that it runs on a CPU): the baseline
has no hooks at all; the other carries the ``RoutingReplay`` hooks and runs recording (r2's
old-log-prob forward) and replaying (r3's forwards, r2's training forward, with flip counting),
from uint8 ids as the experience stores them. Forward and forward+backward are timed
single-threaded in process CPU time (other jobs on a shared machine do not count), interleaved
round by round; each round gives a ratio to that round's baseline; printed: the median ratio with
its interquartile range, a MISS above the 1.02x target. The hooks' cost is per token and layer,
while a real model's layers cost far more per token than this small one's, so the ratio here is an
upper bound for the real shape.

Transport: bytes per token of the routing as vLLM hands it to the executor (numpy uint8
``[tokens, layers, k]``) and as the experience carries it through Ray's object store (the
serialised ``routed_experts`` tensor), against what a per-micro-batch int64 expansion would hold.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
import common  # noqa: E402
from openrlhf_offpolicy.models.routing_replay import RoutingReplay, bytes_per_token, find_routers  # noqa: E402

TARGET = 1.02

UPSTREAM_BYTES_PER_TOKEN = 45  # int64 sequences + attention mask, bool action mask, five float32 step fields


def tiny_qwen3_moe(layers: int, experts: int, top_k: int, hidden: int):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(vocab_size=512, hidden_size=hidden, intermediate_size=2 * hidden,
                            moe_intermediate_size=hidden // 2, num_hidden_layers=layers, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=hidden // 4, num_experts=experts,
                            num_experts_per_tok=top_k, norm_topk_prob=True, max_position_embeddings=4096)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(config)
    with torch.no_grad():
        for router in find_routers(model):
            router.weight.normal_(0.0, 0.5)
    return model


def timed(fn) -> float:
    """CPU seconds of this (single-threaded) process: robust to other jobs sharing the cores."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--top_k", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    before = common.load_average()

    plain = tiny_qwen3_moe(args.layers, args.experts, args.top_k, args.hidden)
    hooked = tiny_qwen3_moe(args.layers, args.experts, args.top_k, args.hidden)
    controller = RoutingReplay.attach(hooked)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 512, (args.batch, args.length), generator=g)
    with torch.no_grad(), controller.record():
        hooked(ids)
    recorded = controller.recorded()
    # a replayed routing that differs from the model's own (as a rollout engine's would, in part)
    noisy = recorded.clone()
    flip = torch.rand(noisy.shape[:2], generator=g) < 0.1
    # shift a flipped token's whole top-k by one offset: its ids stay distinct (replay refuses repeats)
    noisy[flip] = ((noisy[flip].long() + args.top_k) % args.experts).to(noisy.dtype)

    def forward(model):
        with torch.no_grad():
            model(ids)

    def train(model):
        model(ids).logits.float().logsumexp(-1).mean().backward()

    def record_forward():
        with controller.record():
            forward(hooked)
        controller.recorded()

    def replay_forward():  # r3's old-log-prob forward: nobody reads its flip counts
        with controller.replay(noisy, count_flips=False):
            forward(hooked)

    def replay_train():
        with controller.replay(noisy):
            train(hooked)
        controller.counts()

    forward(plain), record_forward(), replay_forward()  # warm-up
    cases = {"forward: record (r2 old log-probs)": ("forward", record_forward),
             "forward: replay (r3 old log-probs)": ("forward", replay_forward),
             "forward+backward: replay (training step)": ("train", replay_train)}
    ratios = {name: [] for name in cases}
    base = {"forward": [], "train": []}
    for _ in tqdm(range(args.rounds), desc="routing bench rounds"):
        base_forward = timed(lambda: forward(plain))
        base_train = timed(lambda: train(plain))
        base["forward"].append(base_forward)
        base["train"].append(base_train)
        for name, (kind, fn) in cases.items():
            ratios[name].append(timed(fn) / (base_forward if kind == "forward" else base_train))
    lines = [f"load average before {before}, after {common.load_average()}", "",
             f"Qwen3-MoE: {args.layers} MoE layers, top-{args.top_k} of {args.experts} experts, hidden "
             f"{args.hidden}; B={args.batch} T={args.length}; {torch.get_num_threads()} thread; "
             f"{args.rounds} interleaved rounds; replayed ids {noisy.dtype}", "",
             f"baseline (no hooks): forward {statistics.median(base['forward']) * 1e3:.1f} ms, forward+backward "
             f"{statistics.median(base['train']) * 1e3:.1f} ms (medians)", "",
             "| computation | ratio to baseline: median (IQR) | target |", "|---|---:|---:|"]
    misses, summary = [], []
    for name, values in ratios.items():
        target = TARGET if "replay" in name else None
        lines.append(f"| {name} | {common.ratio_cell(values, target)} | {f'<= {target}x' if target else ''} |")
        if common.is_miss(values, target):
            misses.append(f"routing {name} {statistics.median(values):.3f}x > {TARGET}x")
        summary.append(f"routing {name}: {common.ratio_cell(values, target)}")
    lines += ["", *transport_lines(args, summary)]
    common.write_results(args.out, "routing_bench", "\n".join(lines), misses, summary)


def transport_lines(args, summary):
    """Bytes per token of the routing: vLLM's array, the serialised experience field, an int64 copy."""
    from openrlhf_offpolicy.integration.runtime.routing import experience_field

    tokens = 4096
    rng = np.random.default_rng(0)
    # k distinct ids per token and layer (consecutive from a random start), as a router's top-k
    start = rng.integers(0, args.experts, (tokens - 1, args.layers, 1))
    routed = ((start + np.arange(args.top_k)) % args.experts).astype(np.uint8 if args.experts <= 256 else np.uint16)
    field = experience_field(routed, truncate_length=tokens)
    vllm_bytes = len(pickle.dumps(routed, protocol=5)) / tokens
    field_bytes = len(pickle.dumps(field, protocol=5)) / tokens
    int64_bytes = args.layers * args.top_k * 8
    b = bytes_per_token(num_layers=args.layers, top_k=args.top_k, num_experts=args.experts)
    summary.append(f"routing transport: {field_bytes:.0f} B/token through the object store "
                   f"({args.layers} layers x top-{args.top_k}, {field.dtype}); an int64 copy would be {int64_bytes}")
    return [f"Transport per token ({args.layers} layers, top-{args.top_k} of {args.experts}; {tokens}-token sample): "
            f"vLLM's routed_experts array {vllm_bytes:.1f} B (pickled), the experience's routed_experts "
            f"{field_bytes:.1f} B (pickled {field.dtype} tensor; payload {b} B), vs {int64_bytes} B as int64 "
            f"(the per-micro-batch expansion replay no longer makes). Upstream's own step fields: about "
            f"{UPSTREAM_BYTES_PER_TOKEN} B per token. A README-sized step (1,024 samples x 4k tokens) moves "
            f"{b * 1024 * 4096 / 2**30:.2f} GiB of routing. DeepSeek-V3 shape (58 MoE layers, top-8 of 256, uint8): "
            f"{bytes_per_token(num_layers=58, top_k=8, num_experts=256)} B per token."]


if __name__ == "__main__":
    main()
