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


def apply_table(settings: OffPolicySettings, replace: Callable[[Any, str, Any], None], original) -> None:
    """Install every entry whose condition holds (eagerly: imports each entry's module).

    ``replace(owner, name, value)`` records the original for ``undo``; ``original(owner, name)``
    returns the unpatched attribute.
    """
    for patch in PATCHES:
        if patch.when(settings):
            owner, name = patch.owner_and_name()
            replace(owner, name, patch.make(original(owner, name), settings))


# --- issue 10: MoE routing replay (--routing_replay r2/r3); the replacements live in routing.py.
def _routing_on(settings: OffPolicySettings) -> bool:
    return settings.routing_replay != "off"


def _routing_r3(settings: OffPolicySettings) -> bool:
    return settings.routing_replay == "r3"


def _routing_r2(settings: OffPolicySettings) -> bool:
    return settings.routing_replay == "r2"


def _routing(factory: str, *, installed: str = "", mode: bool = False):
    """``make`` for a routing entry: ``routing.<factory>(original[, mode])``.

    ``installed="module:target"`` wraps the attribute as installed at that moment instead of
    upstream's original, for targets another patch of ours wraps first (training_step's metrics
    sink, the top-K ``Actor.forward``)."""

    def make(original, settings):
        from . import routing

        if installed:
            module, target = installed.split(":")
            owner, name = Patch(module, target, make).owner_and_name()
            original = getattr(owner, name)
        args = (original, settings.routing_replay) if mode else (original,)
        return getattr(routing, factory)(*args)

    return make


def _routed_experience(original, settings):
    from .routing import RoutedExperience

    return RoutedExperience


def _time_last_padding_removal(original, settings):
    from .topk import remove_padding_in_sequences

    return remove_padding_in_sequences


_PPO = "openrlhf.trainer.ppo_utils."
for _module in ("experience", "", "samples_generator", "experience_maker", "replay_buffer"):
    register(Patch((_PPO + _module).rstrip("."), "Experience", _routed_experience, _routing_on,
                   "carry routed_experts [B, L, k, T] with the experience"))
for _module in ("openrlhf.trainer.ray.ppo_actor", "openrlhf.trainer.ray.ppo_critic"):
    register(Patch(_module, "Experience", _routed_experience, _routing_on, "carry routed_experts"))
for _module in ("experience", "replay_buffer"):
    register(Patch(_PPO + _module, "remove_padding_in_sequences", _time_last_padding_removal, _routing_on,
                   "trim right padding along time (the last dim) of [B, L, k, T]"))
register(Patch("openrlhf.trainer.ray.vllm_engine", "RolloutRayActor", _routing("RoutedExpertsActor"), _routing_r3,
               "engines with enable_return_routed_experts=True"))
register(Patch("openrlhf.utils.agent", "SingleTurnAgentExecutor.execute", _routing("with_routed_experts"), _routing_r3,
               "keep CompletionOutput.routed_experts"))
register(Patch(_PPO + "samples_generator", "SamplesGenerator._process_response_into_experience",
               _routing("with_routed_experience"), _routing_r3, "routed experts into the experience"))
register(Patch(_PPO + "experience_maker", "RemoteExperienceMaker.make_experience",
               _routing("with_routing_samples", mode=True), _routing_on, "micro-batches for the actor forward"))
register(Patch(_PPO + "experience_maker", "RemoteExperienceMaker._dispatch_forward",
               _routing("with_routing_dispatch", mode=True), _routing_on, "routing to the old-log-prob forward"))
register(Patch(_PPO + "experience_maker", "RemoteExperienceMaker._flatten_results",
               _routing("with_recorded_split"), _routing_r2, "r2: keep the recorded routing"))
register(Patch("openrlhf.trainer.ray.launcher", "BaseModelActor.execute_batch",
               _routing("with_routing_execute_batch"), _routing_on, "routing per item to Actor.forward"))
register(Patch("openrlhf.models.actor", "Actor.forward",
               _routing("with_routing_actor_forward", installed="openrlhf.models.actor:Actor.forward"), _routing_on,
               "old-log-prob forward: replay (r3) or record (r2)"))
register(Patch("openrlhf.trainer.ray.ppo_actor", "ActorPPOTrainer.training_step",
               _routing("with_routing_training_step",
                        installed="openrlhf.trainer.ray.ppo_actor:ActorPPOTrainer.training_step"), _routing_on,
               "training forward replays the experience's routing"))
