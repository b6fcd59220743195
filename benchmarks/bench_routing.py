"""Benchmark: MoE routing replay's forward overhead, and the routing's storage per token.

    python benchmarks/bench_routing.py [--batch 2 --length 128 --rounds 21]

Two identical tiny random Qwen3-MoE models (same weights): the baseline has no hooks at all; the
other carries the ``RoutingReplay`` hooks and runs recording (r2's old-log-prob forward) and
replaying (r3's forwards, r2's training forward, with flip counting). Forward and forward+backward
are timed single-threaded in process CPU time (other jobs on a shared machine do not
count), interleaved round by round; each round gives a ratio to that round's baseline, and the
median ratio is printed with its min-max spread over the rounds. Storage: bytes per token of the
``routed_experts`` field for a Qwen3-30B-A3B-shaped config (48 MoE layers, top-8 of 128 experts).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from openrlhf_offpolicy.models.routing_replay import RoutingReplay, bytes_per_token, find_routers  # noqa: E402

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
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--top_k", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

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
    noisy[..., 0][flip] = ((noisy[..., 0][flip].long() + args.top_k) % args.experts).to(noisy.dtype)

    def forward(model):
        with torch.no_grad():
            model(ids)

    def train(model):
        model(ids).logits.float().logsumexp(-1).mean().backward()

    def record_forward():
        with controller.record():
            forward(hooked)
        controller.recorded()

    def replay_forward():
        with controller.replay(noisy):
            forward(hooked)
        controller.counts()

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
    lines = [f"tiny Qwen3-MoE: {args.layers} MoE layers, top-{args.top_k} of {args.experts} experts, hidden "
             f"{args.hidden}; B={args.batch} T={args.length}; {torch.get_num_threads()} threads; "
             f"{args.rounds} interleaved rounds", "",
             f"baseline (no hooks): forward {statistics.median(base['forward']) * 1e3:.1f} ms, forward+backward "
             f"{statistics.median(base['train']) * 1e3:.1f} ms (medians)", "",
             "| computation | median ratio to baseline | min | max |", "|---|---:|---:|---:|"]
    for name, values in ratios.items():
        lines.append(f"| {name} | {statistics.median(values):.3f}x | {min(values):.3f}x | {max(values):.3f}x |")
    b = bytes_per_token(num_layers=48, top_k=8, num_experts=128)
    lines += ["", f"Storage: Qwen3-30B-A3B shape (48 MoE layers, top-8 of 128 experts, uint8 ids): {b} bytes per "
              f"token ({b * 4096 / 2**20:.2f} MiB per 4096-token sample), vs about {UPSTREAM_BYTES_PER_TOKEN} bytes "
              f"per token for upstream's own step fields ({b / UPSTREAM_BYTES_PER_TOKEN:.1f}x). "
              f"DeepSeek-V3 shape (58 MoE layers, top-8 of 256, uint8): "
              f"{bytes_per_token(num_layers=58, top_k=8, num_experts=256)} bytes per token."]
    text = "\n".join(lines)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "routing_bench.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
