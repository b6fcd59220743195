"""Run every benchmark (``make bench``), each in its own process, and summarise them.

    python benchmarks/run_all.py [--out bench_results] [--tiny] [--only REGEX]

Benchmarks, in order (each writes ``<name>.md`` / ``.json`` under ``--out``):
  * ``bench_loss.py``: every preset of every registered method (and the registered corrections
    without one) vs upstream's TIS, with and without the step statistics read; the peers (verl, TRL);
  * ``bench_topk.py``: the rollout's top-K transport on the engine actor, and the trainer's gather;
  * ``bench_routing.py``: routing replay's forward overhead at Qwen3-30B-A3B's routing shape, and the
    routing's bytes per token in transport;
  * ``bench_truncation.py``: ``--match_rollout_sampling``'s backward memory and time per truncation;
  * ``bench_truncation_memory.py``: what its truncated log-probs keep for backward (saved bytes)
    and their peak, against the untruncated path;
  * ``bench_bypass.py``: the experience step with ``--bypass_old_logprobs``;
  * ``bench_whole_step.py``: a whole training step of upstream's real loop on the CPU backend with the
    heaviest common configurations (TRM top-K + rejection + every metric; r3 on Qwen3-MoE) against a
    plain step (about 6 minutes: eight ``--smoke_test`` runs).
Printed at the end: each benchmark's wall time, exit status and missed targets, their one-line
summaries, the load average before and after, and the total wall time (also ``summary.md``).
``--tiny`` runs each at a toy size (the test suite does, so that a broken benchmark cannot ship).
The exit status is 1 when a benchmark fails to run (a missed target is reported, not an error).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    result: str  # the JSON file it writes under --out
    tiny: List[str]
    full: List[str]


BENCHES = [
    Bench("loss", "bench_loss.py", "loss_bench.json", ["--batch", "2", "--length", "64", "--rounds", "2"], []),
    Bench("top-K", "bench_topk.py", "topk_bench.json",
          ["--tokens", "64", "--rounds", "2", "--length", "16", "--vocab", "512", "--gather_rounds", "2"], []),
    Bench("routing", "bench_routing.py", "routing_bench.json",
          ["--layers", "2", "--experts", "8", "--top_k", "2", "--hidden", "32", "--length", "16", "--rounds", "2"], []),
    Bench("truncation memory", "bench_truncation.py", "truncation_bench.json",
          ["--length", "16", "--vocab", "512", "--rounds", "2"], []),
    Bench("truncation saved bytes", "bench_truncation_memory.py", "truncation_memory.json",
          ["--tokens", "64", "--vocab", "512", "--rounds", "2"], []),
    Bench("bypass", "bench_bypass.py", "bench_bypass.json",
          ["--batch", "2", "--prompt", "4", "--response", "8", "--micro", "1", "--rounds", "1"], []),
    Bench("whole step", "bench_whole_step.py", "whole_step.json", ["--steps", "2", "--repeats", "1", "--only", "dense"],
          []),
]


def run(bench: Bench, out: str, tiny: bool) -> dict:
    command = [sys.executable, os.path.join(HERE, bench.script), *(bench.tiny if tiny else bench.full), "--out", out]
    print(f"\n===== {bench.name}: {' '.join(command[1:])}", flush=True)
    path = os.path.join(out, bench.result)
    if os.path.exists(path):
        os.remove(path)
    start = time.perf_counter()
    rc = subprocess.call(command)
    wall = time.perf_counter() - start
    result = {"name": bench.name, "rc": rc, "wall_s": wall, "misses": [], "summary": []}
    if rc == 0 and os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
        result["misses"], result["summary"] = data.get("misses", []), data.get("summary", [])
    elif rc == 0:
        result["rc"] = f"no {bench.result} written"
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_results")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: checks that every benchmark runs")
    parser.add_argument("--only", default=None, help="regex on the benchmark names")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    before = common.load_average()
    start = time.perf_counter()
    results = [run(b, args.out, args.tiny) for b in BENCHES if args.only is None or re.search(args.only, b.name)]
    total = time.perf_counter() - start
    lines = ["# make bench" + (" (tiny sizes)" if args.tiny else ""), "",
             f"total wall time {total:.0f} s; load average before {before}, after {common.load_average()}", "",
             "| benchmark | wall s | status | missed targets |", "|---|---:|---|---:|"]
    for r in results:
        status = "ok" if r["rc"] == 0 else f"FAILED ({r['rc']})"
        lines.append(f"| {r['name']} | {r['wall_s']:.0f} | {status} | {len(r['misses'])} |")
    lines += ["", "Summary:"] + [f"- {line}" for r in results for line in r["summary"]]
    misses = [m for r in results for m in r["misses"]]
    lines += ["", f"Missed targets ({len(misses)}):"] + [f"- {m}" for m in misses]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text)
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
