"""The launch in progress in this process: what ``launch.run`` knows while upstream's ``__main__`` runs.

A module of its own so that the patch table's driver-side predicate (``patch_table.in_launcher``)
reads it without importing ``launch``, which imports the patch table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Set

from .settings import OffPolicySettings


@dataclass
class RunState:
    """What ``launch.run`` knows while upstream's ``__main__`` executes."""

    settings: OffPolicySettings
    dry_run: bool
    explicit_flags: Set[str] = field(default_factory=set)
    args: object = None
    config: object = None
    final: Optional[OffPolicySettings] = None
    started: bool = False


_RUN: Optional[RunState] = None


def active() -> Optional[RunState]:
    """The run in progress in this process (None outside ``launch.run``)."""
    return _RUN


def set_active(state: Optional[RunState]) -> None:
    global _RUN
    _RUN = state
