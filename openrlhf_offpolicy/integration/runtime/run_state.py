"""The launch in progress in this process: what ``driver.launch.run`` knows while upstream's ``__main__`` runs.

The runtime layer's view of the driver: the patch table's predicate ``in_launcher`` and the launch
hooks (``launch_hooks``) read it, and call back into the driver only through ``finalize``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Set, Tuple

from .settings import OffPolicySettings


@dataclass
class RunState:
    """What ``driver.launch.run`` knows while upstream's ``__main__`` executes."""

    settings: OffPolicySettings
    dry_run: bool
    # upstream's parsed args -> (config, final settings): the driver's validation (``launch.finalize_args``)
    finalize: Callable[[Any], Tuple[Any, OffPolicySettings]]
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
