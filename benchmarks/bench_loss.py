"""Benchmark: forward+backward time and peak memory of every method vs upstream OpenRLHF's TIS.

    python benchmarks/bench_loss.py [--batch 64 --length 4096 --rounds 15 --out bench_results]

Every method and the baseline (``openrlhf.models.loss.PolicyLoss`` 0.11.2 with
``is_correction_level=token, is_correction_mode=clip``, i.e. token TIS) run on the same inputs in
the same process. Methods are interleaved round by round and the median is reported, so drift of
the machine affects all rows alike. Peak memory is the growth of the process's resident set during
one forward+backward (Linux ``VmHWM`` after resetting it through ``/proc/self/clear_refs``), with
glibc forced to ``mmap`` every large block so that freed tensors leave the resident set at once.
Results: a Markdown table on stdout and ``loss_bench.md`` / ``loss_bench.csv`` under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import os
import re
import statistics
import sys
import time
import types

# Large tensors must be mmapped (and returned to the OS on free) for RSS to track live memory.
if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from openrlhf_offpolicy.models import PolicyLoss  # noqa: E402

BASELINE = "upstream tis"
METHODS = {
    BASELINE: dict(is_correction_level="token", is_correction_mode="clip"),
    "ppo (no correction)": dict(),
    "tis": dict(vllm_is_correction_type="tis"),
    "icepop": dict(vllm_is_correction_type="icepop"),
    "seq-mask-tis": dict(vllm_is_correction_type="seq-mask-tis"),
    "reinforce_pro": dict(vllm_is_correction_type="reinforce_pro"),
    "geo-mask": dict(vllm_is_correction_type="geo-mask"),
    "seq-tis": dict(vllm_is_correction_type="seq-tis"),
    "seq-mis": dict(vllm_is_correction_type="seq-mis"),
    "trm (max k2)": dict(vllm_is_correction_type="trm"),
    "trm (max k2 + mean k3)": dict(vllm_is_correction_type="trm", trm_max_delta=0.1, trm_avg_delta=0.002),
    "trm (binary_kl, current)": dict(vllm_is_correction_type="trm", trm_divergence="binary_kl",
                                     trm_reference="current", trm_max_delta=0.01),
    "seq-binary-kl-mask": dict(vllm_is_correction_type="seq-binary-kl-mask", vllm_is_truncated_threshold=(0, 0.01)),
    "gspo (rollout anchor)": dict(policy_loss_type="gspo", vllm_is_correction_type="tis"),
    "gspo_token + tis": dict(policy_loss_type="gspo_token", vllm_is_correction_type="tis"),
    "sapo + tis": dict(policy_loss_type="sapo", vllm_is_correction_type="tis"),
    "cispo + tis": dict(policy_loss_type="cispo", vllm_is_correction_type="tis"),
    "dppo binary_tv": dict(policy_loss_type="dppo"),
    "dppo binary_kl": dict(policy_loss_type="dppo", dppo_divergence="binary_kl"),
    "is_reshape sech2 + tis": dict(policy_loss_type="is_reshape", vllm_is_correction_type="tis"),
    "is_reshape gaussian correctness + geo-mask": dict(
        policy_loss_type="is_reshape", is_reshape_kernel="gaussian", is_reshape_gamma_mode="correctness",
        is_reshape_gamma=0.5, vllm_is_correction_type="geo-mask"),
}


def load_upstream_policy_loss():
    """Import ``openrlhf/models/loss.py`` 0.11.2 without running ``openrlhf.models.__init__``.

    The package ``__init__`` imports the actor, which needs the CUDA-only ``flash_attn``; the loss
    module itself only needs ``.utils`` (upstream's own tests load it the same way).
    """
    spec = importlib.util.find_spec("openrlhf")
    if spec is None:
        raise SystemExit("openrlhf 0.11.2 is not installed: run `make bench` (it installs the test environment)")
    if "openrlhf.models" not in sys.modules:
        package = types.ModuleType("openrlhf.models")
        package.__path__ = [os.path.join(spec.submodule_search_locations[0], "models")]
        sys.modules["openrlhf.models"] = package
    return importlib.import_module("openrlhf.models.loss").PolicyLoss


def make_module(name: str, upstream_cls):
    kwargs = dict(METHODS[name])
    if name == BASELINE:
        return upstream_cls(**kwargs)
    if "vllm_is_correction_type" in kwargs:
        kwargs["enable_vllm_is_correction"] = True
    return PolicyLoss(**kwargs)


def make_inputs(batch: int, length: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=g) * 4 - 0.01
    lengths = torch.randint(length // 4, length + 1, (batch,), generator=g)
    return {
        "log_probs": old + 0.02 * torch.randn(batch, length, generator=g),
        "old_log_probs": old,
        "rollout_log_probs": old + 0.05 * torch.randn(batch, length, generator=g),
        "advantages": torch.randn(batch, 1, generator=g).expand(batch, length).contiguous(),
        "action_mask": (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).long(),
    }


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1))


def run_once(module, inputs):
    log_probs = inputs["log_probs"].clone().requires_grad_()
    args = {**inputs, "log_probs": log_probs}
    loss = module(**args)[0]
    loss.backward()
    return log_probs.grad


def measure(fn):
    """(seconds, peak resident-set growth in bytes) of one call of ``fn``."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident set
    base = _kib("VmRSS")
    start = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - start
    peak = (_kib("VmHWM") - base) * 1024
    del out
    return elapsed, peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    upstream_cls = load_upstream_policy_loss()
    inputs = make_inputs(args.batch, args.length)
    modules = {name: make_module(name, upstream_cls) for name in METHODS}
    for module in modules.values():  # warm-up (allocator, lazy init)
        run_once(module, inputs)
    times = {name: [] for name in METHODS}
    peaks = {name: [] for name in METHODS}
    for _ in tqdm(range(args.rounds), desc="bench rounds"):
        for name, module in modules.items():
            seconds, peak = measure(lambda: run_once(module, inputs))
            times[name].append(seconds)
            peaks[name].append(peak)

    base_t = statistics.median(times[BASELINE])
    base_m = statistics.median(peaks[BASELINE])
    rows = []
    for name in METHODS:
        t, m = statistics.median(times[name]), statistics.median(peaks[name])
        rows.append((name, t * 1e3, t / base_t, m / 2**20, (m / base_m if base_m else float('nan'))))

    header = (f"B={args.batch} T={args.length} float32, {torch.get_num_threads()} threads, "
              f"median of {args.rounds} interleaved rounds; baseline = openrlhf 0.11.2 PolicyLoss token TIS")
    lines = [header, "", "| method | fwd+bwd ms | time / upstream tis | peak MiB | memory / upstream tis |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {n} | {t:.2f} | {rt:.2f}x | {m:.1f} | {rm:.2f}x |" for n, t, rt, m, rm in rows]
    worst_t = max(r[2] for r in rows)
    worst_m = max(r[4] for r in rows)
    lines += ["", f"worst time ratio {worst_t:.2f}x, worst memory ratio {worst_m:.2f}x (target <= 1.5x)"]
    text = "\n".join(lines)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "loss_bench.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "loss_bench.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "ms", "time_ratio", "peak_mib", "memory_ratio"])
        writer.writerows(rows)


if __name__ == "__main__":
    main()
