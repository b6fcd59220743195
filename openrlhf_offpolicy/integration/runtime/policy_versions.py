"""Policy versions on upstream's rollout and training path (sync ``PPOTrainer`` and async
``PPOTrainerAsync``, with or without ``--train.partial_rollout_enable``).

What is wrapped (entries in ``patch_table.PATCHES``):
  * ``BasePPOTrainer.init_checkpoint_states``: the trainer's version starts at the checkpoint's
    ``global_step`` (0 for a fresh run);
  * ``BasePPOTrainer.broadcast_to_vllm``: around the weight sync, the shared ``VersionClock`` is
    told the version being loaded (``begin``) and, once loaded, that it is live (``commit``). Inside
    a training step that version is ``global_step + 1`` (the weights after the update), else the
    trainer's current version (the broadcast upstream does when it resumes from a checkpoint);
  * ``SamplesGenerator._generate_vllm`` and ``_process_response_into_experience``: every sample the
    former returns gets ``experience.policy_version`` (``staleness.SampleVersion``): ``low`` is the
    clock's committed version when the batch is dispatched; ``high`` is the clock's pending version
    when the sample's response is processed with partial rollouts, else ``low``;
  * ``BasePPOTrainer.train_step(rollout_samples, global_step)``: the trainer's version is
    ``global_step``; samples older than ``--max_staleness`` are dropped (whole prompt groups), the
    ``staleness/*`` metrics of the step are added to the status upstream logs.

Exactness. Sync mode never overlaps generation and weight sync: ``low == high`` and staleness is
0. Async mode without partial rollouts holds upstream's ``VLLMLock`` both while generating a batch
and while syncing weights, so the clock cannot move during a batch: ``low == high`` is exact.
With partial rollouts upstream pauses the engines, loads the weights and resumes while requests
are in flight; ``low`` is then a lower bound of the first token's version (exact unless a sync is
already under way at dispatch) and ``high`` an upper bound of the last token's (it can exceed it
by one when a sync starts between the end of a response and its processing). Staleness and drops
therefore err on the old side.

The clock is one named Ray actor per job (``VersionClock``), shared by the trainer and the
generator, which are different processes in async mode.
"""

from __future__ import annotations

import contextvars
import functools
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

from .staleness import SampleVersion, filter_step
from .factory import settings_free

CLOCK_NAME = "openrlhf_offpolicy_version_clock"
ATTRIBUTE = "policy_version"  # per-sample attribute on upstream's Experience (survives pickling)
# Per-sample ``experience.info`` entry: v_theta - v_behave, the policy updates between the weights that
# generated the sample (its oldest token: ``SampleVersion.low``) and the trainer's at the step. Upstream
# carries info entries through make_experience and the replay buffer to every training micro-batch,
# where the loss reads it (``--a3po_alpha versions``).
VERSION_LAG_KEY = "policy_version_lag"


class VersionClock:
    """The engines' weight version: ``committed`` is live, ``pending`` is being loaded (>= committed)."""

    def __init__(self) -> None:
        self.committed = 0
        self.pending = 0

    def begin(self, version: int) -> None:
        self.pending = version

    def commit(self, version: int) -> None:
        self.committed = self.pending = version

    def read(self) -> Tuple[int, int]:
        return self.committed, self.pending


_clock_handle = None


def clock():
    """This job's ``VersionClock`` actor (created by whichever process asks first)."""
    global _clock_handle
    if _clock_handle is None:
        import ray

        actor_cls = ray.remote(num_cpus=0)(VersionClock)
        _clock_handle = actor_cls.options(name=CLOCK_NAME, get_if_exists=True).remote()
    return _clock_handle


def read_clock() -> Tuple[int, int]:
    import ray

    return tuple(ray.get(clock().read.remote()))


def reset_clock_handle() -> None:
    """Forget the cached handle (tests that restart Ray)."""
    global _clock_handle
    _clock_handle = None


# --------------------------------------------------------------------------- trainer side
@dataclass
class TrainerVersion:
    version: int = 0
    pending: Optional[int] = None  # set during a training step: the version after its update


def trainer_version(trainer) -> TrainerVersion:
    state = getattr(trainer, "_offpolicy_version", None)
    if state is None:
        state = trainer._offpolicy_version = TrainerVersion()
    return state


def with_checkpoint_version(init_checkpoint_states):
    @functools.wraps(init_checkpoint_states)
    def wrapped(self, *args, **kwargs):
        states = init_checkpoint_states(self, *args, **kwargs)
        trainer_version(self).version = int((states or {}).get("global_step", 0))
        return states

    return wrapped


def with_version_broadcast(broadcast_to_vllm):
    @functools.wraps(broadcast_to_vllm)
    def wrapped(self, *args, **kwargs):
        import ray

        state = trainer_version(self)
        version = state.pending if state.pending is not None else state.version
        ray.get(clock().begin.remote(version))
        result = broadcast_to_vllm(self, *args, **kwargs)
        ray.get(clock().commit.remote(version))
        return result

    return wrapped


def sample_versions(samples) -> List[SampleVersion]:
    versions = [getattr(s, ATTRIBUTE, None) for s in samples]
    if any(v is None for v in versions):
        raise RuntimeError(
            "rollout samples without a policy version reached the trainer: the process that generated them "
            "runs without openrlhf_offpolicy's patches (was the job started by openrlhf_offpolicy.cli.train_ppo_ray?)"
        )
    return versions


def group_versions(versions: List[SampleVersion], group_size: int) -> List[SampleVersion]:
    """Each sample gets its prompt group's oldest version, so a group is kept or dropped whole."""
    if group_size < 1 or len(versions) % group_size:
        raise ValueError(f"{len(versions)} samples do not form groups of {group_size}")
    out = []
    for i in range(0, len(versions), group_size):
        group = versions[i: i + group_size]
        merged = SampleVersion(min(v.low for v in group), max(v.high for v in group))
        out += [merged] * group_size
    return out


def dp_ranks(args) -> int:
    """The actor's data-parallel ranks, as upstream counts its "effective actors"."""
    actor, ds = args.actor, args.ds
    return max(1, actor.num_nodes * actor.num_gpus_per_node // ds.ring_attn_size // ds.tensor_parallel_size)


def lockstep_unit(args) -> int:
    """A sample count that every DP rank trains on in lockstep (same number of micro-steps).

    Upstream (0.11.2) cuts a step's samples into experience batches of ``rollout.micro_batch_size``
    (``RemoteExperienceMaker.split_rollout_samples``), gives each rank ceil(batches / R) of them
    (``RayActorGroup.async_run_method_batch``), and each rank trains floor(its samples /
    ``train.micro_batch_size``) micro-steps (``ppo_train``'s DataLoader, ``drop_last``). With a
    multiple of R * rollout.micro_batch_size and of R * train.micro_batch_size samples every rank
    gets the same whole batches and micro-steps, and no sample is dropped by ``drop_last``.
    Dynamic batching syncs the micro-step count itself; it only needs a multiple of R.
    """
    ranks = dp_ranks(args)
    if getattr(args.train, "dynamic_batch_enable", False):
        return ranks
    return math.lcm(ranks * int(args.rollout.micro_batch_size), ranks * int(args.train.micro_batch_size))


def tag_version_lags(samples, versions: List[SampleVersion], trainer_version: int) -> None:
    """Put each sample's policy-version lag (``VERSION_LAG_KEY``) into its ``info``, one entry per sample."""
    import torch

    for sample, version in zip(samples, versions):
        sample.info[VERSION_LAG_KEY] = torch.tensor([float(trainer_version - version.low)])


def with_staleness_filter(train_step, max_staleness: Optional[int], tag_version_lag: bool = False):
    @functools.wraps(train_step)
    def wrapped(self, rollout_samples, global_step, *args, **kwargs):
        state = trainer_version(self)
        state.version = global_step
        if tag_version_lag:
            tag_version_lags(rollout_samples, sample_versions(rollout_samples), global_step)
        versions = group_versions(sample_versions(rollout_samples), self.args.rollout.n_samples_per_prompt)
        kept, stats = filter_step(global_step, rollout_samples, versions, max_staleness,
                                  unit=lockstep_unit(self.args), group=self.args.rollout.n_samples_per_prompt)
        if len(kept) < dp_ranks(self.args):
            # Nothing (or too little for the DP ranks) is fresh enough: no update this step; the next
            # batches come from weights at most as old as the trainer's.
            return {**stats, "staleness/skipped_step": 1.0}, global_step
        state.pending = global_step + 1
        try:
            status, step = train_step(self, kept, global_step, *args, **kwargs)
        finally:
            state.pending = None
        state.version = step
        status.update(stats)
        status["staleness/skipped_step"] = 0.0
        return status, step

    return wrapped


# --------------------------------------------------------------------------- generator side
# (the policy version when the call began, whether weights may change during it), while
# ``SamplesGenerator._generate_vllm`` runs; read by ``with_version_tag``.
_GENERATION: contextvars.ContextVar = contextvars.ContextVar("offpolicy_generation_window", default=None)


def with_version_tags(generate_vllm):
    """Open a generation window: every experience made during the call is tagged (``with_version_tag``)."""

    @functools.wraps(generate_vllm)
    def wrapped(self, *args, **kwargs):
        low, _ = read_clock()
        partial = bool(getattr(self.args.train, "partial_rollout_enable", False))
        token = _GENERATION.set((low, partial))
        try:
            return generate_vllm(self, *args, **kwargs)
        finally:
            _GENERATION.reset(token)

    return wrapped


def with_version_tag(process_response):
    """``_process_response_into_experience`` inside a generation window: the experience gets its
    ``SampleVersion`` (the window's start; with partial rollouts, the version reached since)."""

    @functools.wraps(process_response)
    def wrapped(self, response, *args, **kwargs):
        experience = process_response(self, response, *args, **kwargs)
        window = _GENERATION.get()
        if window is not None:
            import ray

            low, partial = window
            high = ray.get(clock().read.remote())[1] if partial else low
            setattr(experience, ATTRIBUTE, SampleVersion(low, max(low, high)))
        return experience

    return wrapped


# --------------------------------------------------------------------------- patch-table factories
# The table's one factory shape, (original, settings) -> replacement (patch_table.py).
checkpoint_version = settings_free(with_checkpoint_version)
version_broadcast = settings_free(with_version_broadcast)


def staleness_filter(original, settings):
    return with_staleness_filter(original, settings.max_staleness, tag_version_lag=settings.needs_version_lag)


version_tags = settings_free(with_version_tags)
version_tag = settings_free(with_version_tag)
