"""Every upstream symbol this project replaces, in one table.

Each ``Patch`` names the upstream module whose import it waits for, the attribute path replaced
inside it, a factory ``make(original, settings) -> replacement`` and a condition on the settings.
``apply_table(settings)`` installs the entries whose condition holds on the modules that are
already imported; ``patches.undo`` restores every original.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, List

from .settings import OffPolicySettings


def always(settings: OffPolicySettings) -> bool:
    return True


@dataclass(frozen=True)
class Patch:
    """One replaced upstream symbol."""

    module: str  # upstream module, e.g. "openrlhf.trainer.ray.ppo_actor"
    target: str  # attribute path inside it: "PolicyLoss" or "ActorPPOTrainer.training_step"
    make: Callable[[Any, OffPolicySettings], Any]  # (original, settings) -> replacement
    when: Callable[[OffPolicySettings], bool] = always
    why: str = ""

    def owner_and_name(self):
        owner = importlib.import_module(self.module)
        *path, name = self.target.split(".")
        for part in path:
            owner = getattr(owner, part)
        return owner, name


# Filled by the modules that define replacements (see ``register``); listed here in one place.
PATCHES: List[Patch] = []


def register(patch: Patch) -> Patch:
    PATCHES.append(patch)
    return patch


# issue 12: --algo.advantage.estimator reinforce_max (upstream runs its rloo path, then the advantages are
# replaced by openrlhf_offpolicy.advantages.reinforce_max_advantages; see integration/advantages.py).
def _reinforce_max(original, settings: OffPolicySettings):
    from .advantages import make_compute_advantages

    return make_compute_advantages(original, settings)


register(Patch(
    module="openrlhf.trainer.ppo_utils.experience_maker",
    target="RemoteExperienceMaker.compute_advantages_and_returns",
    make=_reinforce_max,
    when=lambda settings: settings.advantage_estimator == "reinforce_max",
    why="reinforce_max advantages (the seed fork's ProMax) on top of upstream's rloo path",
))


def apply_table(settings: OffPolicySettings, replace: Callable[[Any, str, Any], None], original) -> None:
    """Install every entry whose condition holds (eagerly: imports each entry's module).

    ``replace(owner, name, value)`` records the original for ``undo``; ``original(owner, name)``
    returns the unpatched attribute.
    """
    for patch in PATCHES:
        if patch.when(settings):
            owner, name = patch.owner_and_name()
            replace(owner, name, patch.make(original(owner, name), settings))
