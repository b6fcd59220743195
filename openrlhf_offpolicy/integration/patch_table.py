"""Every upstream symbol this project replaces, in one table (``PATCHES``).

Each ``Patch`` names the upstream module whose import it waits for, the attribute path replaced
inside it, a factory ``make(original, settings) -> replacement`` and a condition on the settings.
``patches.install(settings)`` registers a post-import hook per module (``imports``): each entry is
applied when its module is imported, in whatever process imports it, and at once if the module
is already imported. ``patches.undo`` restores every original.

This module imports only the standard library and ``settings``: it is read by the Ray worker
setup hook. The factories import the replacement code (torch, OpenRLHF) only when called, that is
when the upstream module itself is being imported.

``tests/integration/test_patch_table.py`` records, for OpenRLHF 0.11.2, each patched symbol's
signature and a hash of its source: an upgrade fails there with the list of what changed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, List, Tuple

from . import run_state
from .ray_classes import RAY_HANDLE_API, instantiated_class
from .settings import OffPolicySettings


def always(settings: OffPolicySettings) -> bool:
    return True


def topk_on(settings: OffPolicySettings) -> bool:
    return bool(settings.logprobs_topk)


def time_last_fields(settings: OffPolicySettings) -> bool:
    """The experience carries step fields stored time-last (top-K log-probs, routed experts)."""
    return bool(settings.logprobs_topk) or settings.routing_replay != "off"


def own_log_prob_kernel(settings: OffPolicySettings) -> bool:
    """The actor's log-probs go through ``models.logprobs`` (top-K gather, rollout truncation)."""
    return bool(settings.logprobs_topk) or settings.match_rollout_sampling


def cpu_backend(settings: OffPolicySettings) -> bool:
    """``--smoke_test``: upstream's loop on the CPU (``cpu_backend``); never on a GPU run."""
    return settings.cpu_backend


def in_launcher(settings: OffPolicySettings) -> bool:
    """Only while ``launch.run`` executes upstream's ``__main__`` in this process (the driver)."""
    return run_state.active() is not None


@dataclass(frozen=True)
class Patch:
    """One replaced upstream symbol."""

    module: str  # upstream module, e.g. "openrlhf.trainer.ray.ppo_actor"
    target: str  # attribute path inside it: "PolicyLoss" or "ActorPPOTrainer.training_step"
    make: Callable[[Any, OffPolicySettings], Any]  # (original, settings) -> replacement
    when: Callable[[OffPolicySettings], bool] = always
    why: str = ""

    def owner_and_name(self, module=None) -> Tuple[Any, str]:
        owner = module if module is not None else importlib.import_module(self.module)
        *path, name = self.target.split(".")
        for part in path:
            owner = getattr(owner, part)
            if name not in RAY_HANDLE_API:
                owner = instantiated_class(owner)
        return owner, name

    @property
    def symbol(self) -> str:
        return f"{self.module}.{self.target}"


def _factory(where: str) -> Callable[[Any, OffPolicySettings], Any]:
    """``"module:function"`` of this package, imported when the patch is applied."""
    module_name, function = where.split(":")

    def make(original, settings):
        module = importlib.import_module(f"{__package__}.{module_name}")
        return getattr(module, function)(original, settings)

    make.__name__ = function
    make.__qualname__ = where
    return make


_PPO_ACTOR = "openrlhf.trainer.ray.ppo_actor"
_EXPERIENCE_MODULES = (
    "openrlhf.trainer.ppo_utils.experience",
    "openrlhf.trainer.ppo_utils",
    "openrlhf.trainer.ppo_utils.experience_maker",
    "openrlhf.trainer.ppo_utils.samples_generator",
    "openrlhf.trainer.ray.ppo_actor",
    "openrlhf.trainer.ray.ppo_critic",
)

PATCHES: List[Patch] = [
    # ---- the loss and its metrics
    Patch(_PPO_ACTOR, "PolicyLoss", _factory("wrappers:policy_loss"),
          why="ActorPPOTrainer.__init__ builds its loss from this name: our PolicyLoss with the run's settings"),
    Patch(_PPO_ACTOR, "ActorPPOTrainer.training_step", _factory("wrappers:training_step"),
          why="the loss's step statistics go into the returned status; top-K data and the rollout "
              "truncation are announced to the actor forward"),
    Patch(_PPO_ACTOR, "ActorPPOTrainer.ppo_train", _factory("wrappers:ppo_train"),
          why="metrics exact over the step: maxima reduced with max, ratios and ESS from reduced sums"),
    # ---- rollout log-probs
    Patch("openrlhf.trainer.ppo_utils.samples_generator", "SamplingParams", _factory("wrappers:sampling_params"),
          why="request the sampled token's log-prob (or the top-K) from vLLM"),
    Patch("openrlhf.trainer.ray", "create_vllm_engines", _factory("wrappers:create_vllm_engines"),
          why="engines return processed log-probs (after temperature and truncation, as sampled)"),
    Patch("openrlhf.utils.agent", "MultiTurnAgentExecutor.execute", _factory("wrappers:multi_turn_execute"),
          why="every generation requests log-probs with the run's truncation; rollout_log_probs has one "
              "entry per observation token, else an error naming the sample"),
    # ---- the trainer's log-prob kernel
    Patch("openrlhf.models.actor", "log_probs_from_logits", _factory("wrappers:log_probs_from_logits"),
          when=own_log_prob_kernel,
          why="old and current log-probs from one kernel (top-K gather; --match_rollout_sampling truncation)"),
    Patch(_PPO_ACTOR, "PolicyModelActor.forward", _factory("wrappers:policy_forward"),
          when=own_log_prob_kernel, why="old log-probs: the rollout truncation applies to the policy, not to "
                                        "the reference model"),
    *[Patch(module, "compute_approx_kl", _factory("wrappers:approx_kl_outside_truncation"),
            when=lambda settings: settings.match_rollout_sampling,
            why="KL to the reference is 0, not the estimator's cap, on a sampled token outside the trainer's "
                "truncation (log-prob -inf; masked out of the loss and counted)")
      for module in ("openrlhf.trainer.ppo_utils.experience_maker", _PPO_ACTOR)],
    # ---- top-K log-probs (--vllm_logprobs_topk)
    *[Patch(module, "Experience", _factory("topk:experience_class"), when=topk_on,
            why="Experience plus the rollout's top-K fields, wherever upstream bound the name")
      for module in _EXPERIENCE_MODULES],
    *[Patch(module, "remove_padding_in_sequences", _factory("topk:remove_padding"), when=time_last_fields,
            why="trim the time-last step fields too (top-K, routed experts)")
      for module in ("openrlhf.trainer.ppo_utils.experience", "openrlhf.trainer.ppo_utils.replay_buffer")],
    Patch("openrlhf.utils.agent", "SingleTurnAgentExecutor.execute", _factory("topk:execute"),
          why="the sampled token's log-prob (and the top-K ids and log-probs) from vLLM's flat log-probs by "
              "array slicing, not per-token dict lookups; a pass-through when no log-probs are requested"),
    Patch("openrlhf.trainer.ppo_utils.samples_generator", "SamplesGenerator._process_response_into_experience",
          _factory("topk:process_response"), when=topk_on, why="the experience carries the top-K fields"),
    Patch("openrlhf.trainer.ray.vllm_engine", "RolloutRayActor", _factory("topk:rollout_actor"), when=topk_on,
          why="engines start with max_logprobs >= K"),
    Patch("openrlhf.models.actor", "Actor.forward", _factory("topk:actor_forward"), when=topk_on,
          why="place the micro-batch's top-K ids in the logits layout and collect pi_theta there"),
    # ---- the CPU backend (--smoke_test): only what assumes CUDA (see cpu_backend)
    *[Patch("torch.cuda", name, _factory("cpu_backend:cuda_noop"), when=cpu_backend,
            why="a CUDA call with nothing to do on the CPU")
      for name in ("set_device", "empty_cache", "synchronize", "current_stream")],
    Patch("torch.cuda", "current_device", _factory("cpu_backend:cpu_device"), when=cpu_backend,
          why="upstream moves tensors to the current device: the CPU"),
    Patch("openrlhf.utils.deepspeed.deepspeed", "init_device_mesh", _factory("cpu_backend:cpu_device_mesh"),
          when=cpu_backend, why="DeepspeedStrategy builds its mesh on 'cuda'"),
    Patch("openrlhf.trainer.ppo_utils.replay_buffer", "NaiveReplayBuffer.__init__",
          _factory("cpu_backend:cpu_replay_buffer"), when=cpu_backend, why="target device cuda:<index>"),
    Patch(_PPO_ACTOR, "stateless_init_process_group", _factory("cpu_backend:gloo_weight_sync_group"),
          when=cpu_backend, why="the trainer's weight-broadcast group is PyNccl: gloo on the CPU"),
    Patch("openrlhf.trainer.ray.vllm_engine", "RolloutRayActor.__init__", _factory("cpu_backend:standin_engine_init"),
          when=cpu_backend, why="RolloutRayActor builds vllm.AsyncLLMEngine: the CPU stand-in engine"),
    # ---- the driver, while launch.run executes upstream's __main__
    Patch("openrlhf.utils.config", "hierarchize", _factory("launch:hierarchize"), when=in_launcher,
          why="validate our settings on upstream's parsed args and finalise them"),
    Patch("ray", "init", _factory("launch:ray_init"), when=in_launcher,
          why="our settings and worker setup hook in the job's runtime env; the user's hook chained"),
    Patch("ray", "is_initialized", _factory("launch:ray_is_initialized"), when=in_launcher,
          why="--dry_run stops where upstream's train() would start Ray; refuse a Ray started elsewhere"),
    # ---- wandb (the trainer's process)
    Patch("openrlhf.utils.logging_utils", "WandbLogger.__init__", _factory("wandb_config:wandb_logger_init"),
          why="the wandb config holds upstream's sections as nested dicts and our resolved settings"),
    # ---- advantages (--algo.advantage.estimator reinforce_max)
    Patch("openrlhf.trainer.ppo_utils.experience_maker", "RemoteExperienceMaker.compute_advantages_and_returns",
          _factory("advantages:make_compute_advantages"),
          when=lambda settings: settings.advantage_estimator == "reinforce_max",
          why="reinforce_max advantages (the seed fork's ProMax) replace those of upstream's rloo path"),
]


# --- async training: policy versions and staleness, bypass mode, engine dtype --------------------------
# (factories import their module lazily: this table stays importable without Ray or OpenRLHF)
def _versions(name):
    def make(original, settings):
        from . import policy_versions

        factory = getattr(policy_versions, name)
        if name == "with_staleness_filter":
            return factory(original, settings.max_staleness, tag_version_lag=settings.needs_version_lag)
        return factory(original)

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
          when=lambda s: s.bypass_old_logprobs, why="--bypass_old_logprobs (and a3po): pi_old := pi_roll, no actor "
          "forward"),
    Patch("openrlhf.trainer.ray.vllm_engine", "RolloutRayActor.options", _engine_dtype,
          when=lambda s: s.engine_dtype is not None, why="--vllm_dtype: upstream hard-codes bfloat16 engines"),
]


def register(patch: Patch) -> Patch:
    """Add an entry (prefer appending to ``PATCHES`` above, in a block commented with your issue)."""
    PATCHES.append(patch)
    return patch


# --- MoE routing replay (--routing_replay r2/r3); the replacements live in ``routing``. Entries on a
# symbol another entry above already replaces (Actor.forward, training_step) compose on top of it.
def routing_on(settings: OffPolicySettings) -> bool:
    return settings.routing_replay != "off"


def routing_r3(settings: OffPolicySettings) -> bool:
    return settings.routing_replay == "r3"


def routing_r2(settings: OffPolicySettings) -> bool:
    return settings.routing_replay == "r2"


def _routing(factory: str, mode: bool = False) -> Callable[[Any, OffPolicySettings], Any]:
    """``routing.<factory>(original[, mode])``, imported when the patch is applied."""

    def make(original, settings):
        from . import routing

        args = (original, settings.routing_replay) if mode else (original,)
        return getattr(routing, factory)(*args)

    make.__name__ = make.__qualname__ = f"routing:{factory}"
    return make


_PPO = "openrlhf.trainer.ppo_utils."
PATCHES += [
    *[Patch(module, "Experience", _factory("routing:routed_experience_class"), routing_on,
            "Experience plus routed_experts [B, L, k, T], wherever upstream bound the name")
      for module in (*_EXPERIENCE_MODULES, _PPO + "replay_buffer")],
    Patch("openrlhf.trainer.ray.vllm_engine", "RolloutRayActor", _routing("RoutedExpertsActor"), routing_r3,
          "engines with enable_return_routed_experts=True"),
    Patch("openrlhf.utils.agent", "SingleTurnAgentExecutor.execute", _routing("with_routed_experts"), routing_r3,
          "keep CompletionOutput.routed_experts"),
    Patch(_PPO + "samples_generator", "SamplesGenerator._process_response_into_experience",
          _routing("with_routed_experience"), routing_r3, "routed experts into the experience"),
    Patch(_PPO + "experience_maker", "RemoteExperienceMaker.make_experience",
          _routing("with_routing_samples", mode=True), routing_on, "micro-batches for the actor forward"),
    Patch(_PPO + "experience_maker", "RemoteExperienceMaker._dispatch_forward",
          _routing("with_routing_dispatch", mode=True), routing_on, "routing to the old-log-prob forward"),
    Patch(_PPO + "experience_maker", "RemoteExperienceMaker._flatten_results",
          _routing("with_recorded_split"), routing_r2, "r2: keep the recorded routing"),
    Patch("openrlhf.trainer.ray.launcher", "BaseModelActor.execute_batch",
          _routing("with_routing_execute_batch"), routing_on, "routing per item to Actor.forward"),
    Patch("openrlhf.models.actor", "Actor.forward", _routing("with_routing_actor_forward"), routing_on,
          "old-log-prob forward: replay (r3) or record (r2)"),
    Patch(_PPO_ACTOR, "ActorPPOTrainer.training_step", _routing("with_routing_training_step"), routing_on,
          "training forward replays the experience's routing"),
]
