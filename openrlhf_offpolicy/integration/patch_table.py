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


# --- issue 11: policy versions and staleness, bypass mode, engine dtype --------------------------
# (factories import their module lazily: this table stays importable without Ray or OpenRLHF)
def _versions(name):
    def make(original, settings):
        from . import policy_versions

        factory = getattr(policy_versions, name)
        return factory(original, settings.max_staleness) if name == "with_staleness_filter" else factory(original)

    return make


def _bypass(original, settings):
    from .bypass import with_bypass

    return with_bypass(original)


def _engine_dtype(original, settings):
    from .engine_dtype import with_engine_dtype

    return with_engine_dtype(original, settings.engine_dtype)


PATCHES += [
    Patch("openrlhf.trainer.ppo_trainer", "BasePPOTrainer.init_checkpoint_states",
          _versions("with_checkpoint_version"), why="the trainer's policy version starts at the checkpoint's step"),
    Patch("openrlhf.trainer.ppo_trainer", "BasePPOTrainer.broadcast_to_vllm", _versions("with_version_broadcast"),
          why="publish the version of the weights the engines load"),
    Patch("openrlhf.trainer.ppo_trainer", "BasePPOTrainer.train_step", _versions("with_staleness_filter"),
          why="staleness/* metrics; --max_staleness drops old samples"),
    Patch("openrlhf.trainer.ppo_utils.samples_generator", "SamplesGenerator._generate_vllm",
          _versions("with_version_tags"), why="every sample carries the policy version it was generated with"),
    Patch("openrlhf.trainer.ppo_utils.experience_maker", "RemoteExperienceMaker.make_experience", _bypass,
          when=lambda s: s.bypass_old_logprobs, why="--bypass_old_logprobs: pi_old := pi_roll, no actor forward"),
    Patch("openrlhf.trainer.ray.vllm_engine", "RolloutRayActor.options", _engine_dtype,
          when=lambda s: s.engine_dtype is not None, why="--vllm_dtype: upstream hard-codes bfloat16 engines"),
]


def register(patch: Patch) -> Patch:
    PATCHES.append(patch)
    return patch


def apply_table(settings: OffPolicySettings, replace: Callable[[Any, str, Any], None], original) -> None:
    """Install every entry whose condition holds (eagerly: imports each entry's module).

    ``replace(owner, name, value)`` records the original for ``undo``; ``original(owner, name)``
    returns the unpatched attribute.
    """
    for patch in PATCHES:
        if patch.when(settings):
            owner, name = patch.owner_and_name()
            replace(owner, name, patch.make(original(owner, name), settings))
