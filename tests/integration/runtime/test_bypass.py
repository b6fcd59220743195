"""``--bypass_old_logprobs`` on upstream's real ``RemoteExperienceMaker.make_experience``.

Stand-ins: the actor and reference ``RayActorGroup``s (``Group``: counts forward calls, returns
given log-probs in upstream's result layout); samples are built directly.
"""

from types import SimpleNamespace

import pytest
import torch

from openrlhf_offpolicy.corrections import resolve_config
from openrlhf_offpolicy.integration.runtime import patches
from openrlhf_offpolicy.integration.runtime.bypass import RolloutLogProbsGroup, bypass_rejection
from openrlhf_offpolicy.integration.runtime.settings import OffPolicySettings


@pytest.fixture(scope="module")
def ray_local():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


class Group:
    def __init__(self, log_probs):
        self.log_probs = log_probs  # one [B, A] tensor per micro-batch
        self.forward_calls = 0

    def async_run_method_batch(self, method_name, **kwargs):
        import ray

        assert method_name == "forward"
        self.forward_calls += 1
        return [ray.put(list(self.log_probs))]

    def async_run_method(self, method_name, **kwargs):
        return []


def make_samples(n_micro=2, batch=2, length=6, seed=0):
    from openrlhf.trainer.ppo_utils.experience import Experience

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_micro):
        mask = torch.ones(batch, length - 1, dtype=torch.bool)
        mask[:, :2] = False
        out.append(Experience(sequences=torch.randint(0, 50, (batch, length), generator=g),
                              attention_mask=torch.ones(batch, length, dtype=torch.long), action_mask=mask,
                              rollout_log_probs=-torch.rand(batch, length - 1, generator=g),
                              rewards=torch.ones(batch), info={}))
    return out


def make_maker(actor, reference):
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

    ns = SimpleNamespace
    args = ns(ds=ns(ring_attn_size=1, tensor_parallel_size=1),
              train=ns(colocate_all=False, colocate_actor_ref=False, colocate_critic_reward=False),
              algo=ns(kl=ns(use_loss=False, estimator="k1"), advantage=ns(estimator="group_norm")))
    return RemoteExperienceMaker(actor, None, None, reference, None, ns(args=args), None)


@pytest.mark.parametrize("bypass", [False, True])
def test_bypass_skips_the_actor_forward_and_uses_the_rollout_log_probs(ray_local, bypass):
    samples = make_samples()
    actor_lp = [-torch.rand(2, 5) for _ in samples]
    ref_lp = [-torch.rand(2, 5) for _ in samples]
    actor, reference = Group(actor_lp), Group(ref_lp)
    patches.install(OffPolicySettings(bypass_old_logprobs=bypass))
    try:
        maker = make_maker(actor, reference)
        out = maker.make_experience(samples)
    finally:
        patches.undo()
    assert actor.forward_calls == (0 if bypass else 1) and reference.forward_calls == 1
    assert maker.actor_model_group is actor  # restored after the call
    for exp, a, r in zip(out, actor_lp, ref_lp):
        old = exp.rollout_log_probs if bypass else a
        torch.testing.assert_close(exp.action_log_probs, old, rtol=0, atol=0)
        # the reference KL (k1) is measured from whichever policy is pi_old
        torch.testing.assert_close(exp.kl, (old - r).to(exp.kl.dtype), rtol=0, atol=1e-7)


def test_bypass_refuses_samples_without_rollout_log_probs(ray_local):
    samples = make_samples(n_micro=1)
    samples[0].rollout_log_probs = None
    with pytest.raises(ValueError, match="needs the rollout log-probs"):
        RolloutLogProbsGroup(samples, 1).async_run_method_batch("forward")


def test_bypass_repeats_results_for_duplicate_ring_or_tp_ranks(ray_local):
    import itertools

    samples = make_samples(n_micro=3)
    ref = RolloutLogProbsGroup(samples, 2).async_run_method_batch("forward")
    flat = list(itertools.chain.from_iterable(ray_local.get(ref)[::2]))  # upstream's _flatten_results
    assert len(flat) == 3 and all(torch.equal(f, s.rollout_log_probs) for f, s in zip(flat, samples))


@pytest.mark.parametrize("kwargs,ok", [
    (dict(), True),
    (dict(policy_loss_type="sapo"), True),
    (dict(policy_loss_type="dppo"), True),
    (dict(enable_vllm_is_correction=True, vllm_is_correction_type="tis"), False),
    (dict(enable_vllm_is_correction=True, vllm_is_correction_type="icepop"), False),
    (dict(is_correction_level="token", is_correction_mode="mask"), False),
    (dict(enable_vllm_is_correction=True, vllm_is_correction_type="trm", trm_max_delta=0.05), False),
    (dict(enable_vllm_is_correction=True, vllm_is_correction_type="trm", trm_max_delta=0.05,
          trm_reference="current"), True),
])
def test_corrections_that_compare_pi_old_with_pi_roll_are_rejected_in_bypass_mode(kwargs, ok):
    reason = bypass_rejection(resolve_config(**kwargs))
    assert (reason is None) == ok
    if not ok:
        assert "rho = pi_old/pi_roll = 1" in reason and "\n" not in reason
