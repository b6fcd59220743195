"""Install this project into a process running OpenRLHF 0.11.2: the one place that patches it.

``apply(settings)`` replaces, in the current process:
  * ``openrlhf.trainer.ray.ppo_actor.PolicyLoss``: the class ``ActorPPOTrainer.__init__`` builds its
    loss from, with ``policy_loss_class(settings)``;
  * ``ActorPPOTrainer.training_step``: wrapped so the loss writes its metrics into the
    ``experience.info`` upstream merges into the logged status;
  * ``openrlhf.trainer.ppo_utils.samples_generator.SamplingParams``: wrapped to request the
    rollout log-probs (``logprobs``) whenever ``settings.request_rollout_logprobs``;
  * ``openrlhf.trainer.ray.create_vllm_engines``: wrapped so the engines return processed
    log-probs (``logprobs_mode="processed_logprobs"``: after temperature, as sampled);
  * with ``--vllm_logprobs_topk``, the path of the rollout's top-K log-probs (``topk.py``).
Upstream itself requests rollout log-probs only when its own ``is_correction_level`` is on.
``apply`` is idempotent; ``undo`` restores upstream (tests).
"""

from __future__ import annotations

import functools
import inspect
from typing import Dict, Optional, Tuple

from .loss import PENDING, OpenRLHFPolicyLoss, PendingTopK, policy_loss_class
from .settings import OffPolicySettings

_originals: Dict[Tuple[object, str], object] = {}
_applied: Optional[OffPolicySettings] = None


def _replace(owner, name: str, value) -> None:
    _originals.setdefault((owner, name), getattr(owner, name))
    setattr(owner, name, value)


def _original(owner, name: str):
    return _originals.get((owner, name), getattr(owner, name))


def apply(settings: OffPolicySettings) -> None:
    global _applied
    if _applied == settings:
        return
    import openrlhf.trainer.ray as ray_package
    from openrlhf.trainer.ppo_utils import samples_generator
    from openrlhf.trainer.ray import ppo_actor

    if _applied is not None:
        undo()
    _replace(ppo_actor, "PolicyLoss", policy_loss_class(settings))
    trainer = ppo_actor.ActorPPOTrainer
    _replace(trainer, "training_step", _with_metrics_sink(_original(trainer, "training_step")))
    sampling_params = _original(samples_generator, "SamplingParams")
    _replace(samples_generator, "SamplingParams", _with_rollout_logprobs(sampling_params))
    _replace(ray_package, "create_vllm_engines", _with_logprobs_mode(_original(ray_package, "create_vllm_engines")))
    if settings.logprobs_topk:
        _apply_topk(settings.logprobs_topk)
    from .patch_table import apply_table

    apply_table(settings, _replace, _original)
    _applied = settings


def _apply_topk(k: int) -> None:
    import sys

    import openrlhf.models.actor as actor_module
    from openrlhf.trainer.ppo_utils import experience, replay_buffer, samples_generator
    from openrlhf.trainer.ray import vllm_engine
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    from . import topk

    upstream_experience = experience.Experience
    for name, module in list(sys.modules.items()):
        if name.startswith("openrlhf.") and getattr(module, "Experience", None) is upstream_experience:
            _replace(module, "Experience", topk.TopKExperience)
    for module in (experience, replay_buffer):
        _replace(module, "remove_padding_in_sequences", topk.remove_padding_in_sequences)
    _replace(SingleTurnAgentExecutor, "execute", topk.with_topk_rows(SingleTurnAgentExecutor.execute, k))
    generator = samples_generator.SamplesGenerator
    _replace(generator, "_process_response_into_experience",
             topk.with_topk_experience(generator._process_response_into_experience, k))
    _replace(vllm_engine, "RolloutRayActor", topk.MaxLogprobsActor(vllm_engine.RolloutRayActor, k))
    _replace(actor_module, "log_probs_from_logits", topk.with_topk_gather(actor_module.log_probs_from_logits))
    _replace(actor_module.Actor, "forward", topk.with_topk_forward(actor_module.Actor.forward))


def undo() -> None:
    global _applied
    for (owner, name), value in _originals.items():
        setattr(owner, name, value)
    _originals.clear()
    _applied = None


def _with_metrics_sink(training_step):
    """Around each micro-batch: the loss writes its metrics into ``experience.info``, and the
    micro-batch's top-K data (if any) is announced to the actor forward and the loss."""

    @functools.wraps(training_step)
    def wrapped(self, experience, *args, **kwargs):
        loss_fn = self.actor_loss_fn
        if not isinstance(loss_fn, OpenRLHFPolicyLoss):
            return training_step(self, experience, *args, **kwargs)
        pending = None
        if getattr(experience, "rollout_topk_ids", None) is not None:
            pending = PENDING.set(PendingTopK.from_experience(experience))
        loss_fn.experience_info = experience.info
        try:
            return training_step(self, experience, *args, **kwargs)
        finally:
            loss_fn.experience_info = None
            if pending is not None:
                PENDING.reset(pending)

    return wrapped


def rollout_logprobs_wanted(settings: Optional[OffPolicySettings]) -> int:
    """How many log-probs per generated token to request from vLLM (0: none)."""
    if settings is None:
        return 0
    if settings.logprobs_topk:
        return settings.logprobs_topk
    return 1 if settings.request_rollout_logprobs else 0


# The wrappers read the settings applied when they are called, not when they were made: the
# upstream CLI module binds ``create_vllm_engines`` at import, before the arguments are final.
def _with_rollout_logprobs(sampling_params_cls):
    def sampling_params(*args, **kwargs):
        wanted = rollout_logprobs_wanted(_applied)
        if wanted:
            kwargs["logprobs"] = max(kwargs.get("logprobs") or 0, wanted)
        return sampling_params_cls(*args, **kwargs)

    return sampling_params


def _with_logprobs_mode(create_vllm_engines):
    signature = inspect.signature(create_vllm_engines)

    @functools.wraps(create_vllm_engines)
    def create(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        if rollout_logprobs_wanted(_applied) and not bound.arguments.get("logprobs_mode"):
            bound.arguments["logprobs_mode"] = "processed_logprobs"
        return create_vllm_engines(*bound.args, **bound.kwargs)

    return create
