"""What every benchmark shares: paired timing, ratio summaries with their spread, the load average,
resident-set peaks, and the result files ``run_all.py`` collects.

A benchmark times its candidate and its baseline back to back in each round (alternating which goes
first), so that a busy shared machine slows both alike, and reports the per-round ratios' median
with their interquartile range; a median above its target is marked ``MISS``. Each benchmark writes
``<name>.md`` (its tables) and ``<name>.json`` (``{"misses": [...], "summary": [...]}``) under ``--out``.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple


def mmap_large_blocks() -> bool:
    """True when glibc returns large freed blocks to the OS at once (resident-set peaks track live
    memory); the benchmarks re-exec themselves with ``MALLOC_MMAP_THRESHOLD_`` set otherwise."""
    return os.environ.get("MALLOC_MMAP_THRESHOLD_") == "65536"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def quartiles(values: Sequence[float]) -> Tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def timed(fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    start = clock()
    fn()
    return clock() - start


def paired_ratios(candidates: Dict[str, Callable[[], object]], baseline: Callable[[], object], rounds: int,
                  clock: Callable[[], float] = time.perf_counter, progress=None):
    """``({name: [t_candidate / t_baseline per round]}, {name: [t_candidate]}, [t_baseline])``, each
    candidate timed back to back with its own baseline run, alternating the order round by round."""
    for fn in (baseline, *candidates.values()):  # warm-up
        fn()
    ratios = {name: [] for name in candidates}
    times = {name: [] for name in candidates}
    base_times: List[float] = []
    iterator = range(rounds) if progress is None else progress(range(rounds))
    for r in iterator:
        for name, fn in candidates.items():
            if r % 2:
                t_base, t_fn = timed(baseline, clock), timed(fn, clock)
            else:
                t_fn, t_base = timed(fn, clock), timed(baseline, clock)
            ratios[name].append(t_fn / t_base)
            times[name].append(t_fn)
            base_times.append(t_base)
    return ratios, times, base_times


def ratio_cell(values: Sequence[float], target: Optional[float] = None) -> str:
    """``1.02x (0.99-1.05)``: median and interquartile range, ``**MISS**`` above the target."""
    q1, median, q3 = quartiles(values)
    miss = target is not None and median > target
    return f"{median:.3f}x ({q1:.3f}-{q3:.3f})" + (" **MISS**" if miss else "")


def is_miss(values: Sequence[float], target: Optional[float]) -> bool:
    return target is not None and quartiles(values)[1] > target


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def peak_memory(fn: Callable[[], object]) -> int:
    """Peak resident-set growth (bytes) while ``fn`` runs (Linux ``VmHWM`` after resetting it)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident set
    base = _kib("VmRSS")
    out = fn()
    peak = (_kib("VmHWM") - base) * 1024
    del out
    return peak


def write_results(out: str, name: str, text: str, misses: Sequence[str], summary: Sequence[str],
                  extra: Optional[dict] = None) -> None:
    """Print the tables; write ``<name>.md`` and ``<name>.json`` (read by ``run_all.py``)."""
    text = text.rstrip() + f"\n\nmissed targets: {', '.join(misses) if misses else 'none'}\n"
    print(text)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump({"misses": list(misses), "summary": list(summary), **(extra or {})}, f, indent=2)
