"""Benchmark: forward+backward time of every method against upstream OpenRLHF's TIS and the peers.

    python benchmarks/bench_loss.py [--batch 64 --length 4096 --rounds 15 --threads 1 --out bench_results]

Two tables, both from paired ratios so that a noisy (shared) machine affects numerator and
denominator alike:

* every method vs ``openrlhf.models.loss.PolicyLoss`` 0.11.2 with ``is_correction_level=token,
  is_correction_mode=clip`` (token TIS); target <= 1.2x;
* every method shared with verl 0.9.1 (``core_algos`` policy losses) or TRL 1.16.0
  (``GRPOTrainer._compute_loss``) vs the peer's own function under matching settings; target <= 1.0x.
  ``make bench`` installs both ``--no-deps`` into ``bench_results/peers`` (see ``peers.py``). Each
  pair is also checked for equal losses and gradients on the bench tensors.

Every round times each pair back to back, in alternating order, and records the ratio of the
two times; the table gives the median and the interquartile range of those per-round ratios,
and marks a median above its target with MISS. Times are the process's CPU time (other jobs on a
shared machine do not count); the thread count is fixed (``--threads``), and the load average is
printed before and after. The methods are derived from the registry: every preset of every
registered method, every registered correction without a preset, and the composable options
(``methods``); methods with top-K divergences get K=20 top-K inputs. With the step statistics read
(the metrics column), each call also computes every statistic and adds it to a status, as the
training integration does after every micro-batch. Peak memory (``--memory``) is the growth of the
process's resident set during one forward+backward (Linux ``VmHWM`` after resetting it through
``/proc/self/clear_refs``), with glibc forced to ``mmap`` every large block so freed tensors
leave the resident set at once. Results: Markdown on stdout and ``loss_bench.md`` / ``.csv``
under ``--out``.
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
import peers  # noqa: E402
from openrlhf_offpolicy.corrections.metrics import StepMetrics  # noqa: E402
from openrlhf_offpolicy.models import PolicyLoss  # noqa: E402

UPSTREAM_TARGET = 1.2
METRICS_TARGET = 1.25  # with every step statistic read, as the training integration does
PEER_TARGET = 1.0
BASELINE = "upstream tis"
TOPK = 20
# Composable options on top of a method (not methods of their own, so they have no preset).
FEATURES = {
    "tis + rejection seq_max_k2, token_k1": dict(vllm_is_correction_type="tis",
                                                rejection=("seq_max_k2:0.05", "token_k1:0.5")),
    "tis + is_batch_normalize": dict(vllm_is_correction_type="tis", is_batch_normalize=True),
    "segment-tis": dict(vllm_is_correction_type="segment-tis", vllm_is_truncated_threshold=(0.0, 2.0)),
    "segment-mis": dict(vllm_is_correction_type="segment-mis", vllm_is_truncated_threshold=(0.999, 1.001)),
    "tis + rejection segment_max_k2": dict(vllm_is_correction_type="tis", rejection=("segment_max_k2:0.05",)),
    "tis + rejection m2po": dict(vllm_is_correction_type="tis", rejection=("m2po:0.04",)),
    "glm5_is": dict(policy_loss_type="glm5_is"),
    "prime_dppo": dict(policy_loss_type="prime_dppo"),
    "ipo": dict(policy_loss_type="ipo"),
    "dro + tis": dict(policy_loss_type="dro", vllm_is_correction_type="tis"),
    "topr + tis": dict(policy_loss_type="topr", vllm_is_correction_type="tis"),
    "a3po": dict(policy_loss_type="a3po"),
}


def methods():
    """``{label: kwargs}``: upstream's TIS (the baseline), every preset of every registered method, every
    registered correction without a preset, and the composable options."""
    from openrlhf_offpolicy.corrections import CORRECTIONS
    from openrlhf_offpolicy.presets import registered_presets

    out = {BASELINE: dict(is_correction_level="token", is_correction_mode="clip")}
    out.update({f"preset {name}": kwargs for name, kwargs in registered_presets().items()})
    # the divergence gates take an upper bound only: delta 0.05
    out.update({f"{entry.name} (delta 0.05)": dict(vllm_is_correction_type=entry.name,
                                                   vllm_is_truncated_threshold=(0.0, 0.05))
                for entry in CORRECTIONS if not entry.preset and entry.name != "none"})
    out.update(FEATURES)
    return out


# (label, our PolicyLoss kwargs, peer, peer factory arguments): matching settings, checked equal below.
PEER_PAIRS = [
    ("ppo dual-clip 3 (token-mean)", dict(dual_clip=3.0), "verl", ("vanilla", "token-mean", {})),
    ("gspo", dict(policy_loss_type="gspo"), "verl", ("gspo", "seq-mean-token-mean", {})),
    ("sapo", dict(policy_loss_type="sapo", token_level_loss=False), "verl", ("sapo", "seq-mean-token-mean", {})),
    ("cispo", dict(policy_loss_type="cispo"), "verl",
     ("cispo", "token-mean", dict(clip_ratio_low=1.0, clip_ratio_high=4.0))),
    ("ppo (seq-mean-token-mean)", dict(token_level_loss=False), "trl", ("grpo", {})),
    ("gspo", dict(policy_loss_type="gspo"), "trl", ("grpo", dict(importance_sampling_level="sequence"))),
    ("sapo", dict(policy_loss_type="sapo", token_level_loss=False), "trl", ("sapo", {})),
    ("cispo", dict(policy_loss_type="cispo"), "trl", ("cispo", dict(epsilon_high=5.0))),
    ("dro", dict(policy_loss_type="dro"), "verl",
     ("dro", "token-mean", dict(policy_loss=types.SimpleNamespace(dro_beta=0.05)))),
]


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




def make_module(name: str, upstream_cls, table):
    kwargs = dict(table[name])
    if name == BASELINE:
        return upstream_cls(**kwargs)
    if "vllm_is_correction_type" in kwargs:
        kwargs.setdefault("enable_vllm_is_correction", True)
    return PolicyLoss(**kwargs)


def make_peer(peer: str, factory_args, loaded):
    if peer == "verl":
        core_algos, actor_config, _ = loaded["verl"]
        name, agg, fields = factory_args
        return peers.peer_verl(core_algos, actor_config, name, agg, **fields)
    name, options = factory_args
    return peers.peer_trl(loaded["trl"], name, **options)


def make_inputs(batch: int, length: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=g) * 4 - 0.01
    lengths = torch.randint(length // 4, length + 1, (batch,), generator=g)
    inputs = {
        "log_probs": old + 0.02 * torch.randn(batch, length, generator=g),
        "old_log_probs": old,
        "rollout_log_probs": old + 0.05 * torch.randn(batch, length, generator=g),
        "advantages": torch.randn(batch, 1, generator=g).expand(batch, length).contiguous(),
        "action_mask": (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).float(),
    }
    # the rollout's top-K (for the top-K divergences): K ids per token, log mu there, log pi_theta there
    top = torch.log_softmax(torch.randn(batch, length, TOPK + 4, generator=g) * 2, -1)[..., :TOPK]
    inputs.update(rollout_topk_ids=torch.randint(0, 151936, (batch, length, TOPK), generator=g, dtype=torch.int32),
                  rollout_topk_log_probs=top, topk_log_probs=top + 0.02 * torch.randn(top.shape, generator=g),
                  action_ids=torch.randint(0, 151936, (batch, length), generator=g))
    return inputs


OURS = ("log_probs", "old_log_probs", "advantages", "action_mask", "rollout_log_probs")
TOPK_INPUTS = ("rollout_topk_ids", "rollout_topk_log_probs", "topk_log_probs", "action_ids")


def ours_fn(module, read_metrics: bool = False):
    """Forward of our module; with ``read_metrics`` the step statistics are also computed and added to a
    status as the training integration does after every micro-batch (``StepMetrics.add``)."""
    names = OURS + (TOPK_INPUTS if getattr(getattr(module, "config", None), "needs_topk", False) else ())

    def run(inputs):
        loss = module(**{k: inputs[k] for k in names})[0]
        if read_metrics:
            StepMetrics().add(module.statistics, {"metrics": {}, "weights": {}}, inputs["log_probs"].shape[0])
        return loss

    return run


def run_once(fn, inputs):
    log_probs = inputs["log_probs"].clone().requires_grad_()
    loss = fn({**inputs, "log_probs": log_probs})
    loss.backward()
    return loss.detach(), log_probs.grad


def timed(fn, inputs) -> float:
    """CPU time of this process: with a fixed thread count, other jobs sharing the cores do not count."""
    start = time.process_time()
    run_once(fn, inputs)
    return time.process_time() - start


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1))


def peak_memory(fn, inputs) -> int:
    """Peak resident-set growth (bytes) during one forward+backward."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident set
    base = _kib("VmRSS")
    out = run_once(fn, inputs)
    peak = (_kib("VmHWM") - base) * 1024
    del out
    return peak


def paired_ratios(pairs, inputs, rounds: int, desc: str):
    """{label: [t_ours / t_theirs per round]} and {label: [t_ours per round]}, pairs timed back to back."""
    ratios = {label: [] for label, _, _ in pairs}
    times = {label: [] for label, _, _ in pairs}
    for fn_a, fn_b in ((a, b) for _, a, b in pairs):  # warm-up
        run_once(fn_a, inputs)
        run_once(fn_b, inputs)
    for r in tqdm(range(rounds), desc=desc):
        for label, ours, theirs in pairs:
            if r % 2:
                t_theirs, t_ours = timed(theirs, inputs), timed(ours, inputs)
            else:
                t_ours, t_theirs = timed(ours, inputs), timed(theirs, inputs)
            ratios[label].append(t_ours / t_theirs)
            times[label].append(t_ours)
    return ratios, times


def quartiles(values):
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def ratio_rows(ratios, times, target):
    rows = []
    for label, values in ratios.items():
        q1, median, q3 = quartiles(values)
        rows.append(dict(label=label, ms=statistics.median(times[label]) * 1e3, median=median, q1=q1, q3=q3,
                         target=target, miss=median > target))
    return rows


def format_rows(rows, title, extra_header="", extra=None, extra_columns=0):
    lines = [f"| {title} | ours fwd+bwd ms | ratio median | IQR | target |{extra_header}",
             "|---|---:|---:|---:|---:|" + "---:|" * extra_columns]
    for row in rows:
        mark = " **MISS**" if row["miss"] else ""
        tail = f" {extra(row)} |" if extra else ""
        lines.append(f"| {row['label']} | {row['ms']:.2f} | {row['median']:.2f}x{mark} | "
                     f"{row['q1']:.2f}-{row['q3']:.2f} | <= {row['target']:.1f}x |{tail}")
    return lines


def check_equal(ours, theirs, inputs):
    """(|loss difference|, max |gradient difference|) of a pair on the bench tensors."""
    loss_a, grad_a = run_once(ours, inputs)
    loss_b, grad_b = run_once(theirs, inputs)
    return float((loss_a - loss_b).abs()), float((grad_a - grad_b).abs().max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (fixed for the whole run)")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory vs upstream TIS")
    parser.add_argument("--no_peers", action="store_true", help="skip the verl/TRL table")
    parser.add_argument("--only", default=None, help="regex: bench only the methods whose label matches")
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    upstream_cls = load_upstream_policy_loss()
    inputs = make_inputs(args.batch, args.length)
    table = methods()
    selected = [n for n in table if n != BASELINE and (args.only is None or re.search(args.only, n))]
    baseline = ours_fn(make_module(BASELINE, upstream_cls, table))
    upstream_pairs = [(name, ours_fn(make_module(name, upstream_cls, table)), baseline) for name in selected]
    ratios, times = paired_ratios(upstream_pairs, inputs, args.rounds, "vs upstream TIS")
    upstream_rows = ratio_rows(ratios, times, UPSTREAM_TARGET)
    # The same pairs with our diagnostics read after every call (what the training integration does).
    full_pairs = [(name, ours_fn(make_module(name, upstream_cls, table), read_metrics=True), baseline)
                  for name in selected]
    full_ratios, _ = paired_ratios(full_pairs, inputs, args.rounds, "vs upstream TIS, metrics read")
    for row in upstream_rows:
        row["with_metrics"] = quartiles(full_ratios[row["label"]])
    memory = {}
    if args.memory:
        base_m = statistics.median(peak_memory(baseline, inputs) for _ in range(3))
        for name, fn, _ in upstream_pairs:
            memory[name] = statistics.median(peak_memory(fn, inputs) for _ in range(3)) / max(base_m, 1)

    peer_rows, notes = [], []
    if not args.no_peers:
        loaded = {}
        try:
            loaded["verl"] = peers.load_verl()
            if loaded["verl"][2]:
                notes.append(f"verl 0.9.1 loaded with inert stand-ins for its unused imports {loaded['verl'][2]}")
            loaded["trl"] = peers.load_trl()
        except ImportError as e:
            notes.append(f"peers not installed ({e}); run `make bench`")
        pairs = []
        peer_inputs = {**inputs, **peers.trl_extra_inputs(inputs)}
        for label, kwargs, peer, factory_args in PEER_PAIRS:
            if peer not in loaded or (args.only is not None and not re.search(args.only, label)):
                continue
            ours = ours_fn(PolicyLoss(**kwargs))
            theirs = make_peer(peer, factory_args, loaded)
            name = f"{label} vs {peer}"
            loss_diff, grad_diff = check_equal(ours, theirs, peer_inputs)
            notes.append(f"{name}: |loss diff| {loss_diff:.1e}, max |grad diff| {grad_diff:.1e}")
            pairs.append((name, ours, theirs))
        if pairs:
            ratios, times = paired_ratios(pairs, peer_inputs, args.rounds, "vs peers")
            peer_rows = ratio_rows(ratios, times, PEER_TARGET)
    load_after = os.getloadavg()

    header = (f"B={args.batch} T={args.length} float32, torch {torch.__version__}, {torch.get_num_threads()} "
              f"thread(s), {args.rounds} rounds of back-to-back pairs (alternating order); "
              f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
              f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} on {os.cpu_count()} CPUs")
    lines = [header, "", "Time per method / time of openrlhf 0.11.2 PolicyLoss token TIS, per round (our "
             "step statistics are computed when first read; the metrics column includes computing them and adding "
             "them to a status, as the training integration does after every micro-batch):", ""]
    def upstream_extra(row):
        q1, median, q3 = row["with_metrics"]
        mark = " **MISS**" if median > METRICS_TARGET else ""
        cell = f"{median:.2f}x ({q1:.2f}-{q3:.2f}){mark}"
        return cell + (f" | {memory[row['label']]:.2f}x" if memory else "")

    lines += format_rows(upstream_rows, "method",
                         f" + metrics read: median (IQR), target <= {METRICS_TARGET}x |"
                         + (" memory / upstream |" if memory else ""),
                         upstream_extra, extra_columns=2 if memory else 1)
    if peer_rows:
        lines += ["", "Time of our PolicyLoss / time of the peer's own function, same tensors, per round:", ""]
        lines += format_rows(peer_rows, "method vs peer")
    misses = [r["label"] for r in upstream_rows + peer_rows if r["miss"]]
    misses += [f"{r['label']} (metrics read)" for r in upstream_rows if r["with_metrics"][1] > METRICS_TARGET]
    lines += [""] + [f"- {n}" for n in notes]
    summary = []
    if upstream_rows:
        plain = [r["median"] for r in upstream_rows]
        read = [r["with_metrics"][1] for r in upstream_rows]
        summary.append(f"loss vs upstream TIS over {len(upstream_rows)} methods (every preset): "
                       f"{min(plain):.2f}-{max(plain):.2f}x, {sum(v <= UPSTREAM_TARGET for v in plain)} within "
                       f"{UPSTREAM_TARGET}x; with metrics read {min(read):.2f}-{max(read):.2f}x, "
                       f"{sum(v <= METRICS_TARGET for v in read)} within {METRICS_TARGET}x")
    if peer_rows:
        summary.append(f"loss vs peers (verl/TRL): {min(r['median'] for r in peer_rows):.2f}-"
                       f"{max(r['median'] for r in peer_rows):.2f}x over {len(peer_rows)} pairs")
    sys.path.insert(0, HERE)
    import common

    common.write_results(args.out, "loss_bench", "\n".join(lines), misses, summary)
    with open(os.path.join(args.out, "loss_bench.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["table", "method", "ours_ms", "ratio_median", "ratio_q1", "ratio_q3", "target", "miss"])
        for table, rows in (("upstream_tis", upstream_rows), ("peer", peer_rows)):
            for r in rows:
                writer.writerow([table, r["label"], f"{r['ms']:.3f}", f"{r['median']:.3f}", f"{r['q1']:.3f}",
                                 f"{r['q3']:.3f}", r["target"], r["miss"]])


if __name__ == "__main__":
    main()
