"""Policy versions on upstream's real sync and async training loops (CPU).

What runs is upstream 0.11.2's own code: ``GenerateSamplesActor.fit`` and ``TrainingActor.fit``
(the two halves of ``PPOTrainerAsync``, run here as threads of the test process instead of Ray
actors, with upstream's ``VLLMLock`` actor and ``ray.util.queue.Queue``s), ``TrainingActor.
broadcast_to_vllm`` (lock, pause/resume), ``SamplesGenerator`` and ``BasePPOTrainer.train_step``,
``ppo_train`` and ``broadcast_to_vllm``. Stand-ins (no GPU, no model):
  * ``FakeEngine`` (a Ray actor) for the vLLM engines: answers every prompt, and stamps each
    response with the weight version it holds at the first and the last token (ground truth);
  * ``Models`` for the actor model group: ``fit`` counts updates (the trainer's true version),
    ``broadcast_to_vllm`` loads that version into the engines; the experience maker is the
    identity; a prompt list for the dataloader; logging records the status dicts.
The generator/trainer constructors (tokenizer, datasets, DeepSpeed) are not run.
"""

import threading
import time
from types import SimpleNamespace

import pytest

from openrlhf_offpolicy.integration.runtime import patches, policy_versions
from openrlhf_offpolicy.integration.runtime.settings import OffPolicySettings
from openrlhf_offpolicy.integration.runtime.staleness import SampleVersion

N_SAMPLES = 2
FRESH = {"episode": 0, "global_step": 0, "total_consumed_prompts": 0, "data_loader_state_dict": {}}
BATCH = 2


@pytest.fixture(scope="module")
def ray_local():
    import ray

    import sys

    # the stand-in actors below are defined in this test module, which Ray workers cannot import
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    policy_versions.reset_clock_handle()  # the handle belongs to this Ray session
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def actors(ray_local):
    """One engine and one lock for the module (starting Ray actors is what costs time here)."""
    from openrlhf.trainer import ppo_trainer_async as upstream

    return SimpleNamespace(engine=ray_local.remote(FakeEngine).remote(), lock=upstream.VLLMLock.remote())


@pytest.fixture
def versions(ray_local, actors):
    def apply(**settings):
        patches.install(OffPolicySettings(**settings))
        ray_local.get([policy_versions.clock().commit.remote(0), actors.engine.reset.remote()])

    yield apply
    patches.undo()


class FakeEngine:
    def __init__(self):
        self.reset()

    def reset(self, token_delay: float = 0.0):
        self.version = 0
        self.token_delay = token_delay

    def load_weights(self, version):
        self.version = version

    def get_num_unfinished_requests(self):
        return 0

    async def pause_generation(self):
        pass

    async def resume_generation(self):
        pass

    async def generate_responses(self, prompt, label, sampling_params, max_length, hf_tokenizer, num_samples=1,
                                 images=None):
        import asyncio

        first = self.version
        await asyncio.sleep(self.token_delay)
        last = self.version
        return [{"prompt": prompt, "label": label, "observation_tokens": [1, 2, 3, 4, 5], "action_ranges": [(3, 5)],
                 "reward": 1.0, "scores": 1.0, "rollout_log_probs": [0.0, 0.0, -0.5, -0.7],
                 "extra_logs": {"first_version": first, "last_version": last}} for _ in range(num_samples)]


class Models:
    """Stand-in for the actor RayActorGroup: fit = one update, broadcast = load it into the engines."""

    def __init__(self, engines, fit_seconds=0.0):
        self.engines = engines
        self.updates = 0
        self.fit_seconds = fit_seconds
        self.trained = []  # (true trainer version, samples) per update

    def async_run_method_batch(self, method_name, experience):
        self.pending = experience
        return []

    def async_run_method(self, method_name, **kwargs):
        import ray

        if method_name == "fit":
            time.sleep(self.fit_seconds)
            self.trained.append((self.updates, self.pending))
            self.updates += 1
            return [ray.put({"policy_loss": 0.0})]
        if method_name == "broadcast_to_vllm":
            return [e.load_weights.remote(self.updates) for e in self.engines]
        return []


def make_args(partial=False, num_prompts=8):
    ns = SimpleNamespace
    return ns(
        rollout=ns(batch_size=BATCH, n_samples_per_prompt=N_SAMPLES, vllm_generate_batch_size=None,
                   micro_batch_size=1),
        vllm=ns(enable_sleep=False), ds=ns(enable_sleep=False, ring_attn_size=1, tensor_parallel_size=1),
        actor=ns(num_nodes=1, num_gpus_per_node=1), critic=ns(freezing_steps=-1),
        algo=ns(dynamic_filtering_enable=False, advantage=ns(is_correction_level="off")),
        train=ns(num_episodes=1, partial_rollout_enable=partial, dynamic_batch_enable=False, micro_batch_size=1),
        eval=ns(steps=float("inf")), logger=ns(logging_steps=1), ckpt=ns(save_steps=float("inf")),
    )


class Loader:
    def __init__(self, n):
        self.prompts = [f"p{i}" for i in range(n)]

    def __len__(self):
        return len(self.prompts) // BATCH

    def __iter__(self):
        for i in range(0, len(self.prompts), BATCH):
            chunk = self.prompts[i: i + BATCH]
            yield None, chunk, chunk, [None] * len(chunk)

    def state_dict(self):
        return {}


def _original_class(actor_class):
    return actor_class.__ray_metadata__.modified_class.__mro__[1]


def make_trainer(cls, args, engines, models, **extra):
    trainer = object.__new__(cls)
    trainer.args = args
    trainer.strategy = SimpleNamespace(args=args)
    trainer.vllm_engines = engines
    trainer.actor_model_group = models
    trainer.critic_model_group = None
    trainer.experience_maker = SimpleNamespace(make_experience_batch=lambda samples: samples)
    trainer.tokenizer = SimpleNamespace(decode=lambda *a, **k: ["text"])
    trainer.kl_ctl = SimpleNamespace(value=0.0, update=lambda *a: None)
    trainer.logged = []
    trainer.wandb_logger = trainer.tensorboard_logger = None
    trainer.save_logs_and_checkpoints = lambda step, status=None, states=None: trainer.logged.append((step, status))
    for key, value in extra.items():
        setattr(trainer, key, value)
    return trainer


def run_async(ray, actors, args, queue_size, fit_seconds, token_delay=0.0):
    """Upstream's PPOTrainerAsync.fit, with its two actors as threads; returns (trainer, models)."""
    from ray.util.queue import Queue

    from openrlhf.trainer import ppo_trainer_async as upstream
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

    engines = [actors.engine]
    ray.get(actors.engine.reset.remote(token_delay))
    models = Models(engines, fit_seconds)
    lock = actors.lock
    rollout_queue, slots = Queue(maxsize=queue_size), Queue(maxsize=queue_size)
    for _ in range(queue_size):
        slots.put(0)
    common = dict(vllm_lock=lock, rollout_queue=rollout_queue, rollout_slots=slots,
                  _partial_rollout=args.train.partial_rollout_enable)
    generator = object.__new__(_original_class(upstream.GenerateSamplesActor))
    loader = Loader(8)
    generator.__dict__.update(
        args=args, prompts_dataloader=loader, eval_dataloader=None, _last_eval_step=-1, _eval_just_done=False,
        generate_kwargs={"n_samples_per_prompt": N_SAMPLES, "max_len": 64},
        samples_generator=SamplesGenerator(SimpleNamespace(args=args), loader, None, None, engines), **common)
    trainer = make_trainer(_original_class(upstream.TrainingActor), args, engines, models, **common)
    trainer.init_checkpoint_states()  # what PPOTrainerAsync.fit does first (here: a fresh run)
    producer = threading.Thread(target=generator.fit, args=(0, 0), daemon=True)
    consumer = threading.Thread(target=trainer.fit, kwargs={"global_step": 0}, daemon=True)
    producer.start()
    consumer.start()
    for thread in (producer, consumer):
        thread.join(timeout=60)
        assert not thread.is_alive(), "upstream's async loop did not finish"
    return trainer, models


def _init_checkpoint_states_fresh(monkeypatch):
    from openrlhf.trainer.ppo_trainer import BasePPOTrainer

    # upstream reads the checkpoint directory; a fresh run returns global_step 0
    monkeypatch.setattr(BasePPOTrainer, "init_checkpoint_states",
                        policy_versions.with_checkpoint_version(lambda self: dict(FRESH)))


def _check_against_engine_truth(models):
    """Every trained sample's recorded versions bound the engine's own; staleness = true lag."""
    for true_version, samples in models.trained:
        for s in samples:
            first, last = int(s.info["first_version"][0]), int(s.info["last_version"][0])
            v = s.policy_version
            assert v.low <= first and v.high >= last, (v, first, last)
            assert true_version - v.low >= true_version - first


def test_async_staleness_is_the_true_lag_and_bounded_by_the_queue(versions, ray_local, actors, monkeypatch):
    queue_size = 2
    versions()
    _init_checkpoint_states_fresh(monkeypatch)
    trainer, models = run_async(ray_local, actors, make_args(), queue_size, fit_seconds=0.5)
    steps = [status for _, status in trainer.logged]
    assert len(models.trained) == 4 and len(steps) == 4
    lags = []
    for (true_version, samples), status in zip(models.trained, steps):
        truth = [true_version - int(s.info["first_version"][0]) for s in samples]
        # without partial rollouts the lock makes the versions exact
        assert all(s.policy_version == SampleVersion(first, first)
                   for s, first in ((s, int(s.info["first_version"][0])) for s in samples))
        assert status["staleness/mean"] == pytest.approx(sum(truth) / len(truth))
        assert status["staleness/max"] == max(truth)
        assert status["staleness/partial_frac"] == 0.0 and status["staleness/dropped_frac"] == 0.0
        lags += truth
    assert max(lags) == queue_size  # the generator runs ahead by the queue, not more


def test_max_staleness_drops_old_batches_and_skips_the_update(versions, ray_local, actors, monkeypatch):
    versions(max_staleness=1)
    _init_checkpoint_states_fresh(monkeypatch)
    trainer, models = run_async(ray_local, actors, make_args(), queue_size=2, fit_seconds=0.5)
    statuses = [status for _, status in trainer.logged]
    assert any(s["staleness/dropped_frac"] == 1.0 and s["staleness/skipped_step"] == 1.0 for s in statuses)
    for true_version, samples in models.trained:
        assert all(true_version - s.policy_version.low <= 1 for s in samples)
    dropped = sum(s["staleness/dropped_frac"] == 1.0 for s in statuses)
    assert len(models.trained) + dropped == len(statuses) == 4


def test_partial_rollouts_record_bounds_of_the_versions_their_tokens_came_from(versions, ray_local, actors,
                                                                                 monkeypatch):
    versions()
    _init_checkpoint_states_fresh(monkeypatch)
    trainer, models = run_async(ray_local, actors, make_args(partial=True), queue_size=2, fit_seconds=0.2,
                                token_delay=0.3)
    _check_against_engine_truth(models)
    spanned = [s for _, samples in models.trained for s in samples
               if int(s.info["first_version"][0]) != int(s.info["last_version"][0])]
    assert spanned, "no rollout overlapped a weight update: the test did not exercise partial rollouts"
    assert all(s.policy_version.partial for s in spanned)
    assert any(status["staleness/partial_frac"] > 0 for _, status in trainer.logged)


def test_sync_trainer_sees_zero_staleness(versions, ray_local, actors, monkeypatch):
    from openrlhf.trainer import ppo_trainer as upstream
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

    versions()
    _init_checkpoint_states_fresh(monkeypatch)
    args = make_args()
    engines = [actors.engine]
    models = Models(engines)
    loader = Loader(6)
    trainer = make_trainer(_original_class(upstream.PPOTrainer), args, engines, models,
                           prompts_dataloader=loader, eval_dataloader=None, generate_kwargs={"max_len": 64},
                           samples_generator=SamplesGenerator(SimpleNamespace(args=args), loader, None, None, engines))
    trainer.fit()  # upstream's sync loop: generate, train, broadcast
    assert len(trainer.logged) == 3
    for step, (_, status) in enumerate(trainer.logged):
        assert status["staleness/max"] == 0.0 and status["staleness/trainer_version"] == step
    assert [v for v, _ in models.trained] == [0, 1, 2]
    assert [s.policy_version.low for _, samples in models.trained for s in samples] == [0] * 4 + [1] * 4 + [2] * 4


def test_resumed_trainer_starts_at_the_checkpoint_version(versions, ray_local):
    from openrlhf.trainer.ppo_trainer import BasePPOTrainer

    versions()
    trainer = make_trainer(BasePPOTrainer, make_args(), [], Models([]))
    original = policy_versions.with_checkpoint_version(lambda self: {"global_step": 5})
    original(trainer)
    trainer.broadcast_to_vllm()  # upstream's resume sync
    assert policy_versions.read_clock() == (5, 5)


def test_samples_without_a_version_are_refused(versions, ray_local):
    from openrlhf.trainer.ppo_trainer import BasePPOTrainer
    from openrlhf.trainer.ppo_utils.experience import Experience

    versions()
    trainer = make_trainer(BasePPOTrainer, make_args(), [], Models([]))
    with pytest.raises(RuntimeError, match="without a policy version"):
        trainer.train_step([Experience(), Experience()], 0)


# --------------------------------------------------------------------------- DP lockstep under --max_staleness
def upstream_micro_steps_per_rank(samples, args, monkeypatch):
    """How many training micro-steps each DP rank runs on ``samples``, by upstream's own path:
    ``RemoteExperienceMaker.split_rollout_samples`` (experience batches), ``RayActorGroup.
    async_run_method_batch`` (their split over the ranks), each rank's ``NaiveReplayBuffer`` and
    ``ppo_train``'s ``DataLoader(batch_size=train.micro_batch_size, drop_last=True)``."""
    import ray
    import torch
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
    from openrlhf.trainer.ppo_utils.replay_buffer import NaiveReplayBuffer
    from openrlhf.trainer.ray.launcher import RayActorGroup
    from torch.utils.data import DataLoader

    maker = RemoteExperienceMaker.__new__(RemoteExperienceMaker)
    maker.args, maker.tokenizer = args, SimpleNamespace(pad_token_id=0)
    batches = maker.split_rollout_samples(samples)

    class Rank:
        class execute_batch:  # noqa: N801 (a Ray method handle: .remote)
            @staticmethod
            def remote(method_name, chunk, start, end):
                return chunk["experience"][start:end]

    group = RayActorGroup.__new__(RayActorGroup)
    ranks = args.actor.num_nodes * args.actor.num_gpus_per_node
    group._actor_handlers, group.duplicate_actors = [Rank() for _ in range(ranks)], 1
    monkeypatch.setattr(ray, "put", lambda value: value)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    chunks = group.async_run_method_batch(method_name="append", experience=batches)
    steps = []
    for chunk in chunks:
        buffer = NaiveReplayBuffer(args.train.micro_batch_size)
        for experience in chunk:
            buffer.append(experience)
        steps.append(len(DataLoader(buffer, batch_size=args.train.micro_batch_size, drop_last=True,
                                    collate_fn=buffer.collate_fn)))
    return steps, sum(len(experience.sequences) for chunk in chunks for experience in chunk)


def rollout_sample(i: int, version: int):
    import torch
    from openrlhf.trainer.ppo_utils.experience import Experience

    sample = Experience(sequences=torch.full((1, 4), i), attention_mask=torch.ones(1, 4, dtype=torch.long),
                        action_mask=torch.ones(1, 2, dtype=torch.bool), prompts=[str(i)], labels=[""])
    setattr(sample, policy_versions.ATTRIBUTE, SampleVersion(version, version))
    return sample


def lockstep_args(ranks, rollout_micro, train_micro, group):
    ns = SimpleNamespace
    return ns(rollout=ns(n_samples_per_prompt=group, micro_batch_size=rollout_micro),
              actor=ns(num_nodes=1, num_gpus_per_node=ranks), ds=ns(ring_attn_size=1, tensor_parallel_size=1),
              train=ns(micro_batch_size=train_micro, dynamic_batch_enable=False))


@pytest.mark.parametrize("ranks, rollout_micro, train_micro, group, stale_groups", [
    (2, 2, 2, 2, [0, 3, 5]),      # 10 fresh samples: upstream would give the ranks 3 and 2 micro-steps
    (2, 3, 2, 1, [1]),            # 15 fresh samples in batches of 3 over 2 ranks
    (4, 1, 2, 2, [2]),            # 14 fresh: 4, 4, 4, 2 samples per rank
    (2, 4, 1, 4, [0]),            # 12 fresh: batches of 4 -> 3 batches over 2 ranks
    (3, 2, 2, 2, [0, 1, 2, 3, 4, 5, 6]),  # one fresh group: too few for the ranks, the step is skipped
])
def test_max_staleness_keeps_every_dp_rank_on_the_same_number_of_micro_steps(monkeypatch, ranks, rollout_micro,
                                                                                train_micro, group, stale_groups):
    args = lockstep_args(ranks, rollout_micro, train_micro, group)
    samples = [rollout_sample(i, 0 if i // group in stale_groups else 3) for i in range(8 * group)]
    trained = {}

    def train_step(self, rollout_samples, global_step):
        trained["steps"], trained["samples"] = upstream_micro_steps_per_rank(rollout_samples, args, monkeypatch)
        trained["kept"] = rollout_samples
        return {}, global_step + 1

    trainer = SimpleNamespace(args=args)
    status, _ = policy_versions.with_staleness_filter(train_step, max_staleness=1)(trainer, samples, 3)
    if status["staleness/skipped_step"]:
        assert "steps" not in trained
        assert status["staleness/dropped_frac"] == 1.0
        return
    assert len(set(trained["steps"])) == 1 and trained["steps"][0] > 0, trained["steps"]
    assert trained["samples"] == trained["steps"][0] * ranks * train_micro  # nothing else is silently dropped
    assert status["staleness/dropped_frac"] == pytest.approx(1 - trained["samples"] / len(samples), abs=0)
    groups = [int(s.sequences[0, 0]) // group for s in trained["kept"]]
    assert all(groups.count(g) == group for g in set(groups)), "prompt groups are kept or dropped whole"
    assert not set(groups) & set(stale_groups)


def test_a_step_with_no_stale_sample_is_passed_on_untouched():
    args = lockstep_args(2, 3, 2, 1)  # 5 samples do not split evenly, but nothing is stale: upstream's own batch
    samples = [rollout_sample(i, 3) for i in range(5)]
    seen = {}

    def train_step(self, rollout_samples, global_step):
        seen["n"] = len(rollout_samples)
        return {}, global_step + 1

    wrapped = policy_versions.with_staleness_filter(train_step, max_staleness=1)
    status, _ = wrapped(SimpleNamespace(args=args), samples, 3)
    assert seen["n"] == 5 and status["staleness/dropped_frac"] == 0.0
