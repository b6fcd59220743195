"""Every upstream symbol this project replaces, in one literal table (``PATCHES``), one entry each.

Each ``Patch`` names the upstream module whose import it waits for, the attribute path replaced
inside it, and its wrappers, in the order they apply: each ``Wrapper`` is a factory
``module:function`` of this package with the one shape ``(original, settings) -> replacement``
(``original`` is the previous wrapper's result), a condition on the settings and the reason.
``patches.install(settings)`` registers a post-import hook per module (``imports``): each entry is
applied when its module is imported, in whatever process imports it, and at once if the module
is already imported. ``patches.undo`` restores every original. A target inside a ``@ray.remote``
class is resolved to the class Ray instantiates (``ray_classes.instantiated_class``).

This module imports only the standard library and ``settings``: it is read by the Ray worker
setup hook. The factories import the replacement code (torch, OpenRLHF) only when called, that is
when the upstream module itself is being imported.

``tests/integration/runtime/test_patch_table.py`` records, for OpenRLHF 0.11.2, each patched symbol's
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


def match_rollout_sampling(settings: OffPolicySettings) -> bool:
    return settings.match_rollout_sampling


def bypass_on(settings: OffPolicySettings) -> bool:
    return settings.bypass_old_logprobs


def engine_dtype_set(settings: OffPolicySettings) -> bool:
    return settings.engine_dtype is not None


def reinforce_max(settings: OffPolicySettings) -> bool:
    return settings.advantage_estimator == "reinforce_max"


def routing_on(settings: OffPolicySettings) -> bool:
    return settings.routing_replay != "off"


def routing_r3(settings: OffPolicySettings) -> bool:
    return settings.routing_replay == "r3"


def routing_r2(settings: OffPolicySettings) -> bool:
    return settings.routing_replay == "r2"


@dataclass(frozen=True)
class Wrapper:
    """One feature's replacement of a symbol: ``make(original, settings)``, applied when ``when(settings)``."""

    make: Callable[[Any, OffPolicySettings], Any]
    when: Callable[[OffPolicySettings], bool]
    why: str


@dataclass(frozen=True)
class Patch:
    """One replaced upstream symbol and its wrappers, in the order they apply."""

    module: str  # upstream module, e.g. "openrlhf.trainer.ray.ppo_actor"
    target: str  # attribute path inside it: "PolicyLoss" or "ActorPPOTrainer.training_step"
    wrappers: Tuple[Wrapper, ...]

    def active(self, settings: OffPolicySettings) -> Tuple[Wrapper, ...]:
        """The wrappers this run applies, in order."""
        return tuple(w for w in self.wrappers if w.when(settings))

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


def wrap(where: str, when: Callable[[OffPolicySettings], bool] = always, why: str = "") -> Wrapper:
    """A wrapper whose factory is ``where`` = ``"module:function"`` of this package, imported when the
    patch is applied (this table stays importable without torch, Ray or OpenRLHF)."""
    module_name, function = where.split(":")

    def make(original, settings):
        module = importlib.import_module(f"{__package__}.{module_name}")
        return getattr(module, function)(original, settings)

    make.__name__ = function
    make.__qualname__ = where
    return Wrapper(make, when, why)


_PPO = "openrlhf.trainer.ppo_utils."
_PPO_ACTOR = "openrlhf.trainer.ray.ppo_actor"
_MAKER = _PPO + "experience_maker"
_GENERATOR = _PPO + "samples_generator"
_ENGINE = "openrlhf.trainer.ray.vllm_engine"
_TRAINER = "openrlhf.trainer.ppo_trainer"
# Every module that binds upstream's ``Experience`` (``from ... import Experience``).
_EXPERIENCE_MODULES = (_PPO + "experience", "openrlhf.trainer.ppo_utils", _MAKER, _GENERATOR, _PPO_ACTOR,
                       "openrlhf.trainer.ray.ppo_critic")

TOPK_EXPERIENCE = wrap("topk:experience_class", topk_on,
                       "Experience plus the rollout's top-K fields, wherever upstream bound the name")
ROUTED_EXPERIENCE = wrap("routing:routed_experience_class", routing_on,
                         "Experience plus routed_experts [B, L, k, T], wherever upstream bound the name")
CUDA_NOOP = wrap("cpu_backend:cuda_noop", cpu_backend, "a CUDA call with nothing to do on the CPU")
KL_OUTSIDE_TRUNCATION = wrap(
    "wrappers:approx_kl_outside_truncation", match_rollout_sampling,
    "KL to the reference is 0, not the estimator's cap, on a sampled token outside the trainer's truncation "
    "(log-prob -inf; masked out of the loss and counted)")
TIME_LAST_PADDING = wrap("topk:remove_padding", time_last_fields,
                         "trim the time-last step fields too (top-K, routed experts)")

PATCHES: List[Patch] = [
    # ---- the loss and its metrics
    Patch(_PPO_ACTOR, "PolicyLoss", (
        wrap("wrappers:policy_loss",
             why="ActorPPOTrainer.__init__ builds its loss from this name: our PolicyLoss with the run's settings"),)),
    Patch(_PPO_ACTOR, "ActorPPOTrainer.training_step", (
        wrap("wrappers:training_step",
             why="the loss's step statistics go into the returned status; top-K data and the rollout truncation "
                 "are announced to the actor forward"),
        wrap("routing:routing_training_step", routing_on, "training forward replays the experience's routing"))),
    Patch(_PPO_ACTOR, "ActorPPOTrainer.ppo_train", (
        wrap("wrappers:ppo_train",
             why="metrics exact over the step: maxima reduced with max, ratios and ESS from reduced sums"),)),
    # ---- rollout log-probs
    Patch(_GENERATOR, "SamplingParams", (
        wrap("wrappers:sampling_params", why="request the sampled token's log-prob (or the top-K) from vLLM"),)),
    Patch("openrlhf.trainer.ray", "create_vllm_engines", (
        wrap("wrappers:create_vllm_engines",
             why="engines return processed log-probs (after temperature and truncation, as sampled)"),)),
    Patch("openrlhf.utils.agent", "MultiTurnAgentExecutor.execute", (
        wrap("wrappers:multi_turn_execute",
             why="every generation requests log-probs with the run's truncation; rollout_log_probs has one entry "
                 "per observation token, else an error naming the sample"),)),
    # ---- the trainer's log-prob kernel
    Patch("openrlhf.models.actor", "log_probs_from_logits", (
        wrap("wrappers:log_probs_from_logits", own_log_prob_kernel,
             "old and current log-probs from one kernel (top-K gather; --match_rollout_sampling truncation)"),)),
    Patch(_PPO_ACTOR, "PolicyModelActor.forward", (
        wrap("wrappers:policy_forward", own_log_prob_kernel,
             "old log-probs: the rollout truncation applies to the policy, not to the reference model"),)),
    Patch(_MAKER, "compute_approx_kl", (KL_OUTSIDE_TRUNCATION,)),
    Patch(_PPO_ACTOR, "compute_approx_kl", (KL_OUTSIDE_TRUNCATION,)),
    # ---- the experience's step fields (--vllm_logprobs_topk, --routing_replay)
    *[Patch(module, "Experience", (TOPK_EXPERIENCE, ROUTED_EXPERIENCE)) for module in _EXPERIENCE_MODULES],
    Patch(_PPO + "experience", "remove_padding_in_sequences", (TIME_LAST_PADDING,)),
    Patch(_PPO + "replay_buffer", "remove_padding_in_sequences", (TIME_LAST_PADDING,)),
    Patch("openrlhf.utils.agent", "SingleTurnAgentExecutor.execute", (
        wrap("topk:execute",
             why="the sampled token's log-prob (and the top-K ids and log-probs) from vLLM's flat log-probs by array "
                 "slicing, not per-token dict lookups; a pass-through when no log-probs are requested"),
        wrap("routing:routed_experts_execute", routing_r3, "keep CompletionOutput.routed_experts"))),
    Patch(_GENERATOR, "SamplesGenerator._process_response_into_experience", (
        wrap("topk:process_response", topk_on, "the experience carries the top-K fields"),
        wrap("routing:routed_experience", routing_r3, "routed experts into the experience"),
        wrap("policy_versions:version_tag", why="inside _generate_vllm, the experience carries its policy version"))),
    # The class entry comes before its methods' entries: a method entry resolves through the
    # wrappers of the class entry to the class Ray instantiates.
    Patch(_ENGINE, "RolloutRayActor", (
        wrap("topk:rollout_actor", topk_on, "engines start with max_logprobs >= K"),
        wrap("routing:routed_experts_actor", routing_r3, "engines with enable_return_routed_experts=True"))),
    Patch("openrlhf.models.actor", "Actor.forward", (
        wrap("topk:actor_forward", topk_on,
             "place the micro-batch's top-K ids in the logits layout and collect pi_theta there"),
        wrap("routing:routing_actor_forward", routing_on, "old-log-prob forward: replay (r3) or record (r2)"))),
    Patch(_PPO + "replay_buffer", "Experience", (ROUTED_EXPERIENCE,)),
    # ---- the CPU backend (--smoke_test): only what assumes CUDA (see cpu_backend)
    Patch("torch.cuda", "set_device", (CUDA_NOOP,)),
    Patch("torch.cuda", "empty_cache", (CUDA_NOOP,)),
    Patch("torch.cuda", "synchronize", (CUDA_NOOP,)),
    Patch("torch.cuda", "current_stream", (CUDA_NOOP,)),
    Patch("torch.cuda", "current_device", (
        wrap("cpu_backend:cpu_device", cpu_backend, "upstream moves tensors to the current device: the CPU"),)),
    Patch("openrlhf.utils.deepspeed.deepspeed", "init_device_mesh", (
        wrap("cpu_backend:cpu_device_mesh", cpu_backend, "DeepspeedStrategy builds its mesh on 'cuda'"),)),
    Patch(_PPO + "replay_buffer", "NaiveReplayBuffer.__init__", (
        wrap("cpu_backend:cpu_replay_buffer", cpu_backend, "target device cuda:<index>"),)),
    Patch(_PPO_ACTOR, "stateless_init_process_group", (
        wrap("cpu_backend:gloo_weight_sync_group", cpu_backend,
             "the trainer's weight-broadcast group is PyNccl: gloo on the CPU"),)),
    Patch(_ENGINE, "RolloutRayActor.__init__", (
        wrap("cpu_backend:standin_engine_init", cpu_backend,
             "RolloutRayActor builds vllm.AsyncLLMEngine: the CPU stand-in engine"),)),
    # ---- the driver, while driver.launch.run executes upstream's __main__
    Patch("openrlhf.utils.config", "hierarchize", (
        wrap("launch_hooks:hierarchize", in_launcher,
             "validate our settings on upstream's parsed args and finalise them"),)),
    Patch("ray", "init", (
        wrap("launch_hooks:ray_init", in_launcher,
             "our settings and worker setup hook in the job's runtime env; the user's hook chained"),)),
    Patch("ray", "is_initialized", (
        wrap("launch_hooks:ray_is_initialized", in_launcher,
             "--dry_run stops where upstream's train() would start Ray; refuse a Ray started elsewhere"),)),
    # ---- wandb (the trainer's process)
    Patch("openrlhf.utils.logging_utils", "WandbLogger.__init__", (
        wrap("wandb_config:wandb_logger_init",
             why="the wandb config holds upstream's sections as nested dicts and our resolved settings"),)),
    # ---- advantages (--algo.advantage.estimator reinforce_max)
    Patch(_MAKER, "RemoteExperienceMaker.compute_advantages_and_returns", (
        wrap("advantages:make_compute_advantages", reinforce_max,
             "reinforce_max advantages (the seed fork's ProMax) replace those of upstream's rloo path"),)),
    # ---- async training: policy versions and staleness
    Patch(_TRAINER, "BasePPOTrainer.init_checkpoint_states", (
        wrap("policy_versions:checkpoint_version",
             why="the trainer's policy version starts at the checkpoint's step"),)),
    Patch(_TRAINER, "BasePPOTrainer.broadcast_to_vllm", (
        wrap("policy_versions:version_broadcast", why="publish the version of the weights the engines load"),)),
    Patch(_TRAINER, "BasePPOTrainer.train_step", (
        wrap("policy_versions:staleness_filter", why="staleness/* metrics; --max_staleness drops old samples"),)),
    Patch(_GENERATOR, "SamplesGenerator._generate_vllm", (
        wrap("policy_versions:version_tags",
             why="every sample carries the policy version it was generated with"),)),
    # ---- the experience maker: bypass mode and routing replay
    Patch(_MAKER, "RemoteExperienceMaker.make_experience", (
        wrap("bypass:bypass_make_experience", bypass_on,
             "--bypass_old_logprobs (and a3po): pi_old := pi_roll, no actor forward"),
        wrap("routing:routing_samples", routing_on, "micro-batches for the actor forward"))),
    Patch(_MAKER, "RemoteExperienceMaker._dispatch_forward", (
        wrap("routing:routing_dispatch", routing_on, "routing to the old-log-prob forward"),
        wrap("bypass:bypass_dispatch_forward", bypass_on,
             "bypass: the actor group's forward answered with the rollout log-probs (nothing runs)"))),
    Patch(_MAKER, "RemoteExperienceMaker._flatten_results", (
        wrap("routing:recorded_split", routing_r2, "r2: keep the recorded routing"),)),
    Patch("openrlhf.trainer.ray.launcher", "BaseModelActor.execute_batch", (
        wrap("routing:routing_execute_batch", routing_on, "routing per item to Actor.forward"),)),
    # ---- engine dtype (--vllm_dtype)
    Patch(_ENGINE, "RolloutRayActor.options", (
        wrap("engine_dtype:engine_dtype_options", engine_dtype_set,
             "--vllm_dtype: upstream hard-codes bfloat16 engines"),)),
]
