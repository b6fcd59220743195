"""Generated blocks of the README and docs/, refreshed with ``python -m openrlhf_offpolicy.cli.docs``.

Each file holds a block between ``<!-- generated: NAME -->`` and ``<!-- end generated: NAME -->``;
``FILES`` says which blocks live in which file, and a test checks that every file equals its
rendering. The method tables, the per-method metrics and the launch-script list come from the
registries (``corrections.tables``), the flag table from ``build_parser`` (this CLI's own help).
"""

from __future__ import annotations

import os
import sys
from typing import Dict, Optional, Sequence

from ..corrections import tables

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

FILES: Dict[str, Sequence[str]] = {
    "README.md": ("corrections", "policy-losses", "scripts", "flags"),
    "docs/design.md": ("method-metrics",),
    "docs/migrating.md": ("neighbour-names",),
}


def _usage(action) -> str:
    flag = action.option_strings[0]
    if action.nargs == 0:
        return f"`{flag}`"
    if action.choices is not None and len(action.choices) <= 4:
        return f"`{flag} {{{','.join(map(str, action.choices))}}}`"
    if action.choices is not None:
        return f"`{flag} NAME`"
    metavar = action.metavar or action.dest.upper()
    return f"`{flag} {' '.join(metavar) if isinstance(metavar, tuple) else metavar}`"


def flag_table() -> str:
    """Our flags (every upstream flag is accepted too), from the CLI's parser."""
    from .train_ppo_ray import build_parser

    parser = build_parser()
    rows = ["| flag | meaning |", "|---|---|"]
    params = []
    for group in parser._action_groups:
        for action in group._group_actions:
            if group.title == "method parameters":
                params.append(f"`{action.option_strings[0]}`")
                continue
            rows.append(f"| {_usage(action)} | {action.help.replace('|', chr(92) + '|')} |")
    rows.append(f"| method parameters | {', '.join(params)} (see the method tables and `--help`) |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def neighbour_table() -> str:
    """Every neighbouring tool's name that the CLI maps or refuses, and what it is here."""
    from ..integration.driver.neighbour_names import (CORRECTION_ALIASES, CORRECTION_REFUSALS, VERL_FLAGS, VERL_PREFIX,
                                               VERL_TO_OURS)

    rows = ["| name | here |", "|---|---|"]
    rows += [f"| verl `{flag[2:]}` (`{flag}` or `{VERL_PREFIX}{flag[2:]}`) | `{_cell(VERL_TO_OURS[flag])}` |"
             for flag in VERL_FLAGS]
    rows += [f"| `--vllm_is_correction_type` `{alias}` | `{ours}` |" for alias, ours in CORRECTION_ALIASES.items()]
    rows += [f"| `--vllm_is_correction_type` `{value}` | refused: {_cell(why)} |"
             for value, why in CORRECTION_REFUSALS.items()]
    return "\n".join(rows)


BLOCKS = {**tables.BLOCKS, "flags": flag_table, "neighbour-names": neighbour_table}


def render(text: str, names: Sequence[str]) -> str:
    """``text`` with the blocks ``names`` replaced by their current rendering."""
    return tables.render(text, {name: BLOCKS[name] for name in names})


def main(argv: Optional[Sequence[str]] = None) -> int:
    for path, names in FILES.items():
        full = os.path.join(REPO, path)
        with open(full) as f:
            text = f.read()
        text = render(text, names)  # before opening for writing: a failed render leaves the file as it was
        with open(full, "w") as f:
            f.write(text)
        print(f"refreshed {path}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
