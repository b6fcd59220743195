"""Each logged metric equals its value on the whole step's batch, after upstream's own reduction.

Upstream's real ``ActorPPOTrainer.ppo_train`` and ``training_step`` (with our patches) run on two
simulated data-parallel ranks (two threads): each rank has its own replay buffer, micro-batches of
2 and 2 gradient-accumulation steps; the strategy's ``all_reduce`` combines the ranks' values as
DeepSpeed's does (mean, sum or max over ranks). The policy is a fixed function of the tokens, so
the whole batch's statistics can be computed by one ``PolicyLoss`` call on all sequences at once.
"""

import threading
from types import SimpleNamespace

import pytest
import torch

from openrlhf_offpolicy.integration.runtime import patches
from openrlhf_offpolicy.integration.runtime.settings import OffPolicySettings
from openrlhf_offpolicy.models import PolicyLoss
from helpers import resolved

RANKS, PER_RANK, MICRO, PROMPT, RESP = 2, 8, 2, 3, 7


class Collective:
    """all_reduce across simulated ranks (threads), with DeepSpeed's semantics for dicts and scalars."""

    def __init__(self, n):
        self.n, self.barrier, self.slots = n, threading.Barrier(n, timeout=60), [None] * n

    def all_reduce(self, rank, data, op="mean"):
        self.slots[rank] = data
        self.barrier.wait()
        result = self._reduce(list(self.slots), op)
        self.barrier.wait()
        return result

    def _reduce(self, values, op):
        if isinstance(values[0], dict):
            return {k: self._reduce([v[k] for v in values], op) for k in values[0]}
        as_tensor = [torch.as_tensor(v, dtype=torch.float64) for v in values]
        stacked = torch.stack(as_tensor)
        out = stacked.max(dim=0).values if op == "max" else stacked.sum(dim=0)
        if op == "mean":
            out = out / self.n
        return out.to(values[0].dtype) if isinstance(values[0], torch.Tensor) else float(out)


class Strategy:
    def __init__(self, rank, collective, args):
        self.rank, self.collective, self.args = rank, collective, args
        self.ring_attn_group, self.accumulated_gradient = None, 2

    def all_reduce(self, data, op="mean"):
        return self.collective.all_reduce(self.rank, data, op)

    def is_rank_0(self):
        return self.rank == 0

    def backward(self, loss, model, optimizer):
        loss.backward()

    def optimizer_step(self, *args, **kwargs):
        pass

    def get_grad_norm(self, model):
        return 0.0


def current_log_probs(sequences, old, num_actions):
    """pi_theta: a fixed function of each sample's own tokens (independent of the micro-batch)."""
    actions = sequences[:, PROMPT:PROMPT + num_actions].double()
    return (old.double() + 0.3 * torch.sin(1.7 * actions + old.double())).float()


class FakeActor:
    """Recomputes pi_theta for a micro-batch: rows found by the sample id token at position PROMPT."""

    def __init__(self, all_old):
        self.all_old = all_old

    def train(self):
        pass

    def __call__(self, sequences, action_mask, attention_mask=None, return_output=False, **kwargs):
        num_actions = action_mask.shape[1]
        old = self.all_old[sequences[:, PROMPT] - 50][:, :num_actions]
        return current_log_probs(sequences, old, num_actions).requires_grad_(), {}


def make_batch(seed=0, turns=False):
    """``turns``: the action masks have holes (tool outputs), so rows hold several turns."""
    g = torch.Generator().manual_seed(seed)
    n = RANKS * PER_RANK
    sequences = torch.randint(1, 50, (n, PROMPT + RESP), generator=g)
    sequences[:, PROMPT:PROMPT + 1] = torch.arange(n).unsqueeze(1) + 50  # a unique id per sample
    lengths = torch.randint(1, RESP + 1, (n,), generator=g)
    action_mask = torch.arange(RESP).unsqueeze(0) < lengths.unsqueeze(1)
    if turns:
        holes = torch.rand(n, RESP, generator=g) < 0.3
        holes[:, 0] = False  # the sample id token stays an action token
        action_mask = action_mask & ~holes
    attention_mask = torch.ones(n, PROMPT + RESP, dtype=torch.long)
    attention_mask[:, PROMPT:] = action_mask.long()
    old = -torch.rand(n, RESP, generator=g) * 3 - 0.05
    scale = torch.linspace(0.01, 1.5, n).unsqueeze(1)  # from nearly on-policy to far off-policy
    rollout = (old + scale * torch.randn(n, RESP, generator=g)).clamp(max=-1e-3)
    advantages = torch.randn(n, 1, generator=g).expand(n, RESP).clone()
    zero = lambda t: t * action_mask  # noqa: E731  upstream zero-pads beyond the response
    return dict(sequences=sequences * attention_mask, attention_mask=attention_mask, action_mask=action_mask,
                action_log_probs=zero(old), rollout_log_probs=zero(rollout), advantages=zero(advantages),
                base_action_log_probs=zero(old))


def make_trainer(rank, collective, settings, batch):
    from openrlhf.trainer.ppo_utils.experience import Experience
    from openrlhf.trainer.ppo_utils.replay_buffer import NaiveReplayBuffer
    from openrlhf.trainer.ray import ppo_actor

    args = SimpleNamespace(
        train=SimpleNamespace(dynamic_batch_enable=False, max_epochs=1),
        ds=SimpleNamespace(tensor_parallel_size=1),
        actor=SimpleNamespace(entropy_coef=None, aux_loss_coef=0.0),
        algo=SimpleNamespace(kl=SimpleNamespace(use_loss=False)),
    )
    trainer = object.__new__(ppo_actor.ActorPPOTrainer)
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    n = PER_RANK
    experience = Experience(**{k: v[rows].clone() for k, v in batch.items()},
                            info={"reward": torch.randn(n)}, response_length=torch.ones(n),
                            total_length=torch.ones(n))
    buffer = NaiveReplayBuffer(MICRO, 0, True, False, False)
    buffer.append(experience)
    actor = FakeActor(batch["action_log_probs"])
    trainer.__dict__.update(
        strategy=Strategy(rank, collective, args), args=args, actor=actor, ema_model=None, aux_loss=False,
        actor_optim=None, actor_scheduler=SimpleNamespace(get_last_lr=lambda: [1e-6]), replay_buffer=buffer,
        max_epochs=1, dataloader_pin_memory=False, actor_loss_fn=ppo_actor.PolicyLoss(policy_loss_type="ppo"),
    )
    return trainer


CASES = {
    "tis": {"enable_vllm_is_correction": True, "vllm_is_correction_type": "tis"},
    "seq-mis": {"enable_vllm_is_correction": True, "vllm_is_correction_type": "seq-mis",
                "vllm_is_truncated_threshold": [0.3, 3.0]},
    "trm": {"enable_vllm_is_correction": True, "vllm_is_correction_type": "trm", "trm_max_delta": 0.3,
            "trm_avg_delta": 0.2},
    "segment-mis (multi-turn)": {"enable_vllm_is_correction": True, "vllm_is_correction_type": "segment-mis",
                                 "vllm_is_truncated_threshold": [0.7, 1.4],
                                 "rejection": ["segment_max_k2:0.3", "segment_mean_k3:0.1"]},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_logged_metric_equals_its_whole_batch_value_after_upstreams_reduction(case, monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: False)  # the ranks are simulated
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    from openrlhf.trainer.ppo_utils.experience import Experience

    monkeypatch.setattr(Experience, "to_device", lambda self, device: self)  # a device move, on CPU nothing
    settings = resolved(OffPolicySettings(loss_kwargs=CASES[case]), policy_loss_type="ppo")
    batch = make_batch(turns="multi-turn" in case)
    patches.install(settings)
    try:
        collective = Collective(RANKS)
        trainers = [make_trainer(rank, collective, settings, batch) for rank in range(RANKS)]
        results, errors = [None] * RANKS, []

        def train(rank):
            try:
                results[rank] = trainers[rank].ppo_train(0.0)
            except Exception as e:  # noqa: BLE001  re-raised below
                errors.append(e)
                collective.barrier.abort()

        threads = [threading.Thread(target=train, args=(r,)) for r in range(RANKS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        whole = PolicyLoss(**CASES[case])
        log_probs = current_log_probs(batch["sequences"], batch["action_log_probs"], RESP)
        whole(log_probs, batch["action_log_probs"], batch["advantages"], action_mask=batch["action_mask"],
              rollout_log_probs=batch["rollout_log_probs"])
    finally:
        patches.undo()
    status = results[0]
    assert results[0] == results[1]
    assert not [k for k in status if k.startswith("_offpolicy")], "hidden fields must not be logged"
    assert set(whole.statistics) <= set(status)
    for name, stat in whole.statistics.items():
        assert status[name] == pytest.approx(stat.item(), rel=1e-5, abs=1e-6), name
    if "multi-turn" in case:  # the per-turn and per-segment statistics saw several turns
        assert status["mismatch/k3_turn2"] > 0 and status["rejection/segment_max_k2:0.3/masked_frac"] > 0
    # The naive per-micro-batch average upstream would log differs for the non-additive metrics.
    assert status["is/weight_max"] == pytest.approx(whole.statistics["is/weight_max"].item())
