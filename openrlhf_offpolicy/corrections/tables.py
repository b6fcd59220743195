"""The method tables, metric list and launch-script list of the README and docs/, generated from the
registries.

A file holds each generated block between ``<!-- generated: NAME -->`` and
``<!-- end generated: NAME -->``; ``render(text, blocks)`` rewrites the blocks and a test checks that
each file equals its rendering (``cli.docs.FILES`` says which block lives where). After registering
a method, refresh every generated block with

    python -m openrlhf_offpolicy.cli.docs
"""

from __future__ import annotations

import os
import re
import sys
from typing import Dict, List, Tuple

from .gates import CORRECTIONS, NO_CORRECTION
from .losses import POLICY_LOSSES
from .registry import Param


def _param_flag(p: Param) -> str:
    if p.choices is not None:
        return f"`--{p.name} {'|'.join(p.choices())}`".replace("|", "\\|")
    if p.nargs:
        return f"`--{p.name} {' '.join(p.metavar or ('LO', 'HI'))}`"
    return f"`--{p.name}`"


def _preset(entry) -> str:
    return f"`{entry.preset}`" if entry.preset else ""


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def correction_table() -> str:
    lines = [
        "| `--vllm_is_correction_type` | statistic | action | `c_t` on kept tokens | preset | source |",
        "|---|---|---|---|---|---|",
    ]
    for e in CORRECTIONS:
        if e.name == NO_CORRECTION:
            continue
        name = f"`{e.name}`" + (f" (alias {', '.join(f'`{a}`' for a in e.aliases)})" if e.aliases else "")
        if e.hidden:
            name += " (upstream `is_correction_*` only)"
        lines.append(_row([name, e.statistic, e.action, e.coefficient, _preset(e), e.source]))
    return "\n".join(lines)


def policy_loss_table() -> str:
    lines = [
        "| `--policy_loss_type` | per-token loss | gradient weight on `A grad log pi_theta` | parameters | preset "
        "| source |",
        "|---|---|---|---|---|---|",
    ]
    for e in POLICY_LOSSES:
        flags = [f"`{f}`" for f in e.upstream_flags] + [_param_flag(p) for p in e.params]
        lines.append(_row([f"`{e.name}`", e.formula, e.gradient_weight, ", ".join(flags), _preset(e), e.source]))
    return "\n".join(lines)


def method_metrics() -> str:
    lines = ["| method | metrics |", "|---|---|"]
    for e in list(CORRECTIONS) + list(POLICY_LOSSES):
        if e.metrics:
            lines.append(_row([f"`{e.name}`", ", ".join(f"`{m}`" for m in e.metrics)]))
    return "\n".join(lines)


def launch_scripts() -> Dict[str, Tuple[str, List[Tuple[str, str]]]]:
    """script -> (environment variable that picks the preset, [(preset name, method)]), from the registrations.

    A preset name is its file name under configs/ without ``.yaml``; method is the registered name it selects.
    """
    out: Dict[str, Tuple[str, List[Tuple[str, str]]]] = {}
    for kind, registry in (("CORRECTION", CORRECTIONS), ("LOSS", POLICY_LOSSES)):
        for e in registry:
            if not e.preset:
                continue
            variable = "PRESET" if e.script == "train_preset.sh" else kind
            if e.script == "train_baseline.sh":
                variable = "PRESET" if e.variants else ""
            presets = [os.path.basename(p)[: -len(".yaml")] for p in (e.preset, *e.variants)]
            out.setdefault(e.script, (variable, []))[1].extend((p, e.name) for p in presets)
    return out


def script_list() -> str:
    lines = []
    for script, (variable, presets) in sorted(launch_scripts().items()):
        names = "|".join(p for p, _ in presets)
        how = f"`{variable}={names}`" if variable else f"preset `{names}`"
        lines.append(f"- `{script}`: {how}")
    return "\n".join(lines)


BLOCKS = {
    "corrections": correction_table,
    "policy-losses": policy_loss_table,
    "method-metrics": method_metrics,
    "scripts": script_list,
}


def render(readme: str, blocks=None) -> str:
    """``readme`` with every block of ``blocks`` (default ``BLOCKS``) replaced by its current rendering."""
    for name, make in (BLOCKS if blocks is None else blocks).items():
        pattern = re.compile(rf"(<!-- generated: {name} -->\n).*?(<!-- end generated: {name} -->)", flags=re.S)
        if not pattern.search(readme):
            raise ValueError(f"README has no generated block {name!r}")
        readme = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), readme)
    return readme


def main(argv=None) -> int:
    """Refresh this module's blocks in the given files (``python -m openrlhf_offpolicy.cli.docs`` refreshes
    every generated block of the README and docs/, the CLI's flag table included)."""
    argv = sys.argv[1:] if argv is None else argv
    for path in argv or ["README.md"]:
        with open(path) as f:
            text = f.read()
        present = {name: make for name, make in BLOCKS.items() if f"<!-- generated: {name} -->" in text}
        text = render(text, present)
        with open(path, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
