"""What ``patches.install`` changes in a process, and how the wrapped upstream functions behave."""

import pytest

from openrlhf_offpolicy.integration.runtime import patches
from openrlhf_offpolicy.integration.runtime.settings import OffPolicySettings
from openrlhf_offpolicy.models import PolicyLoss
from helpers import resolved


@pytest.fixture
def applied():
    def _apply(settings):
        patches.install(settings)
        return settings

    yield _apply
    patches.undo()


def test_apply_replaces_the_trainers_policy_loss_and_undo_restores_upstream(applied):
    from openrlhf.models.loss import PolicyLoss as UpstreamPolicyLoss
    from openrlhf.trainer.ray import ppo_actor

    assert ppo_actor.PolicyLoss is UpstreamPolicyLoss
    request = OffPolicySettings(loss_kwargs={"enable_vllm_is_correction": True, "vllm_is_correction_type": "geo-mask"})
    settings = applied(resolved(request, clip_eps_low=0.2, clip_eps_high=0.28, policy_loss_type="ppo"))
    assert issubclass(ppo_actor.PolicyLoss, PolicyLoss) and ppo_actor.PolicyLoss.settings == settings
    loss = ppo_actor.PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.28, policy_loss_type="ppo")
    assert loss.config.correction == "geo-mask" and loss.config.clip_eps_high == 0.28
    with pytest.raises(RuntimeError, match="was resolved with"):  # not the kwargs the driver resolved with
        ppo_actor.PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.2, policy_loss_type="ppo")
    patches.undo()
    assert ppo_actor.PolicyLoss is UpstreamPolicyLoss


@pytest.mark.parametrize("settings,expected", [
    (OffPolicySettings(request_rollout_logprobs=True), 1),
    (OffPolicySettings(request_rollout_logprobs=False), None),
    (OffPolicySettings(logprobs_topk=8), 8),
])
def test_sampling_params_request_the_rollout_logprobs_the_settings_ask_for(applied, settings, expected):
    from openrlhf.trainer.ppo_utils import samples_generator

    applied(settings)
    params = samples_generator.SamplingParams(temperature=1.0, max_tokens=8, logprobs=None)
    assert params.logprobs == expected


def test_create_vllm_engines_gets_processed_logprobs_mode(applied, monkeypatch):
    import openrlhf.trainer.ray as ray_package

    calls = []

    def fake_create(num_engines, tensor_parallel_size, pretrain, seed, full_determinism, enable_prefix_caching,
                    enforce_eager, max_model_len, shared_pg=None, gpu_memory_utilization=None,
                    vllm_enable_sleep=False, logprobs_mode=None, agent_func_path=None, remote_rm_url=None,
                    max_images_per_prompt=0):
        calls.append(logprobs_mode)

    monkeypatch.setattr(ray_package, "create_vllm_engines", fake_create)
    applied(OffPolicySettings(request_rollout_logprobs=True))
    # Upstream's train() passes logprobs_mode positionally (None unless its own correction is on).
    ray_package.create_vllm_engines(1, 1, "m", 0, False, False, False, 2048, None, 0.9, False, None,
                                    agent_func_path=None, remote_rm_url=["r"], max_images_per_prompt=0)
    assert calls == ["processed_logprobs"]
