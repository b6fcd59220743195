"""The upstream versions the patch table was written and tested against (standard library only).

``check_versions()`` runs before Ray starts (the CLI) and in every Ray worker's setup hook: a
different OpenRLHF, or a vLLM outside the tested range, is refused with one line naming the
installed and the expected versions, instead of a traceback in a worker or a silent change.
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import Optional, Tuple

OPENRLHF_VERSION = "0.11.2"
VLLM_RANGE = ("0.29.0", "0.30")  # [lowest tested, first untested)


class UnsupportedVersion(ValueError):
    """An upstream package this project patches has a version it was not tested with."""


def release(version: str) -> Tuple[int, ...]:
    """The release numbers of a version string: "0.29.0rc1+cu128" -> (0, 29, 0)."""
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(p) for p in match.group(0).split(".")) if match else ()


def installed(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def check_versions() -> None:
    """Raise ``UnsupportedVersion`` (one line) unless openrlhf and vllm are the tested versions."""
    openrlhf = installed("openrlhf")
    if openrlhf != OPENRLHF_VERSION:
        raise UnsupportedVersion(
            f"openrlhf_offpolicy patches openrlhf=={OPENRLHF_VERSION}, but openrlhf {openrlhf or 'is not installed'}"
            f"{' is installed' if openrlhf else ''}; install openrlhf=={OPENRLHF_VERSION}"
        )
    vllm = installed("vllm")
    low, high = VLLM_RANGE
    if vllm is not None and not release(low) <= release(vllm) < release(high):
        raise UnsupportedVersion(
            f"openrlhf_offpolicy is tested with vllm>={low},<{high}, but vllm {vllm} is installed"
        )
