"""Sampling-consistent log-probs: the trainer's truncation equals vLLM 0.29's own, and the checks."""

import asyncio
import math
from types import SimpleNamespace

import pytest
import torch
from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

from openrlhf_offpolicy.integration.runtime.sampling import check_generation_params, check_rollout_log_probs_length
from openrlhf_offpolicy.integration.runtime.settings import OffPolicySettings
from openrlhf_offpolicy.models.logprobs import Truncation, log_probs_with_topk, truncate_logits
from helpers import resolved


def vllm_processed_log_probs(logits, top_k=None, top_p=None):
    """What vLLM returns as processed_logprobs (after temperature, top-k/top-p, renormalised)."""
    n = logits.shape[0]
    k = None if top_k is None else torch.full((n,), top_k, dtype=torch.long)
    p = None if top_p is None else torch.full((n,), top_p, dtype=torch.float32)
    return apply_top_k_top_p(logits.clone(), k, p).log_softmax(dim=-1, dtype=torch.float32)


@pytest.mark.parametrize("top_k,top_p", [(None, 0.9), (None, 0.95), (20, None), (50, 0.8)])
def test_trainer_truncation_gives_log_rho_zero_against_vllms_own_filter(top_k, top_p):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 1000, generator=g) * 3.0
    processed = vllm_processed_log_probs(logits, top_k, top_p)
    sampled = torch.multinomial(processed.exp(), 1, generator=g).squeeze(-1)
    rollout = processed.gather(-1, sampled[:, None]).squeeze(-1)
    truncation = Truncation(top_k=top_k or -1, top_p=top_p or 1.0)
    ours, _ = log_probs_with_topk(logits, sampled, truncation=truncation, chunk=16)
    assert torch.allclose(ours - rollout, torch.zeros_like(ours), atol=1e-5)
    # and the kept set is the same token for token
    assert torch.equal(torch.isfinite(truncate_logits(logits, truncation)), torch.isfinite(processed))
    # without matching, log rho_t = log Z_t < 0: the truncation, not the engines, is measured
    full, _ = log_probs_with_topk(logits, sampled)
    assert (full - rollout).mean() < -0.01


def test_min_p_keeps_the_tokens_within_min_p_of_the_most_likely():
    logits = torch.tensor([[2.0, 1.0, 0.0, -3.0]], dtype=torch.float64)
    p = torch.softmax(logits, dim=-1)[0]
    kept = torch.isfinite(truncate_logits(logits, Truncation(min_p=0.3)))[0]
    assert kept.tolist() == [bool(x >= 0.3 * p.max()) for x in p]
    lp, _ = log_probs_with_topk(logits, torch.tensor([1]), truncation=Truncation(min_p=0.3))
    assert lp.item() == pytest.approx(math.log(p[1] / p[kept].sum()))


def test_truncated_log_probs_have_a_finite_gradient_only_on_kept_tokens():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1), requires_grad=True)
    labels = logits.detach().argmax(dim=-1)
    lp, _ = log_probs_with_topk(logits, labels, truncation=Truncation(top_p=0.5))
    lp.sum().backward()
    kept = torch.isfinite(truncate_logits(logits.detach(), Truncation(top_p=0.5)))
    assert torch.isfinite(logits.grad).all() and (logits.grad[~kept] == 0).all()


SETTINGS = OffPolicySettings()


@pytest.mark.parametrize("params,message", [
    (SimpleNamespace(logprobs=None, top_p=1.0, top_k=-1, min_p=0.0), "without logprobs"),
    (SimpleNamespace(logprobs=1, top_p=0.9, top_k=-1, min_p=0.0), "truncation 'top_p=0.9'"),
    (SimpleNamespace(logprobs=1, top_p=1.0, top_k=40, min_p=0.0), "truncation 'top_k=40'"),
    (SimpleNamespace(logprobs=1, top_p=1.0, top_k=-1, min_p=0.05), "truncation 'min_p=0.05'"),
])
def test_a_generation_whose_params_an_agent_changed_is_an_error_naming_the_sample(params, message):
    with pytest.raises(ValueError, match=message) as e:
        check_generation_params(params, SETTINGS, 1, "prompt 'abc'")
    assert str(e.value).startswith("prompt 'abc'")
    check_generation_params(SimpleNamespace(logprobs=1, top_p=1.0, top_k=-1, min_p=0.0), SETTINGS, 1, "p")


def test_matched_truncation_accepts_the_runs_own_params():
    settings = OffPolicySettings(match_rollout_sampling=True, rollout_top_p=0.9)
    check_generation_params(SimpleNamespace(logprobs=1, top_p=0.9, top_k=-1, min_p=0.0), settings, 1, "p")


def test_rollout_log_probs_shorter_than_the_observation_is_an_error():
    with pytest.raises(ValueError, match="rollout_log_probs has 3 entries for 5 observation tokens"):
        check_rollout_log_probs_length({"rollout_log_probs": [0.0] * 3, "observation_tokens": [1] * 5}, "prompt 'x'")
    check_rollout_log_probs_length({"rollout_log_probs": None, "observation_tokens": [1] * 5}, "prompt 'x'")


def test_upstreams_multi_turn_executor_with_an_agent_dropping_logprobs_fails_naming_the_sample():
    """Upstream's own MultiTurnAgentExecutor, patched: the agent's second step returns params without logprobs."""
    from vllm import SamplingParams

    from openrlhf_offpolicy.integration.runtime import patches
    patches.install(OffPolicySettings())
    try:
        from openrlhf.utils import agent as agent_module

        class Agent:
            def __init__(self):
                self.turn = 0

            async def reset(self, states, **kwargs):
                return {"observation": states["observation"]}

            async def step(self, states, **kwargs):
                self.turn += 1
                return {"rewards": torch.tensor(0.0), "scores": torch.tensor(0.0), "environment_feedback": " ok",
                        "done": self.turn >= 2, "sampling_params": SamplingParams(max_tokens=4)}

        class Tokenizer:
            def __call__(self, text, add_special_tokens=False, return_tensors=None, **kwargs):
                return {"input_ids": torch.tensor([[len(text) % 7 + 1, 3]])}

            def decode(self, ids, skip_special_tokens=False):
                return "x" * len(ids)

        class Engine:
            async def generate(self, prompt, sampling_params, multi_modal_data=None):
                from vllm.logprobs import Logprob

                tokens = [5, 6]
                logprobs = None if sampling_params.logprobs is None else [{t: Logprob(-0.5, 1, None)} for t in tokens]
                out = SimpleNamespace(token_ids=tokens, text="ab", finish_reason="stop", logprobs=logprobs)
                return SimpleNamespace(outputs=[out])

        executor = object.__new__(agent_module.MultiTurnAgentExecutor)
        executor.agent_instance_cls = Agent
        run = agent_module.MultiTurnAgentExecutor.execute
        with pytest.raises(ValueError, match="without logprobs") as e:
            asyncio.run(run(executor, "hello there", "label", SamplingParams(max_tokens=4, logprobs=1), 64,
                            Tokenizer(), Engine()))
        assert "prompt 'hello there'" in str(e.value)
    finally:
        patches.undo()


def test_single_turn_sampling_params_with_a_truncation_the_trainer_does_not_apply_are_refused():
    from openrlhf_offpolicy.integration.runtime import patches
    patches.install(OffPolicySettings())
    try:
        from openrlhf.trainer.ppo_utils import samples_generator

        assert samples_generator.SamplingParams(temperature=1.0, max_tokens=4).logprobs == 1
        with pytest.raises(ValueError, match="truncation 'top_k=40'"):
            samples_generator.SamplingParams(temperature=1.0, max_tokens=4, top_k=40)
    finally:
        patches.undo()


def vllm_kept(logits, top_k=None, top_p=None):
    """The tokens vLLM 0.29's PyTorch top-k/top-p path keeps (``apply_top_k_top_p_pytorch``; the path a
    CPU, or a GPU batch of fewer than 8 rows, takes)."""
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    n = logits.shape[0]
    k = None if top_k is None else torch.full((n,), top_k, dtype=torch.long)
    p = None if top_p is None else torch.full((n,), top_p, dtype=torch.float32)
    return apply_top_k_top_p_pytorch(logits.clone(), k, p, allow_cpu_sync=True) != float("-inf")


@pytest.mark.parametrize("top_k,top_p", [(None, 0.9), (None, 0.5), (20, None), (50, 0.8), (1, None)])
def test_trainer_kept_set_equals_vllms_sampler_token_for_token_on_bf16_valued_logits(top_k, top_p):
    # bf16-valued float32 logits (what the engines' bf16 heads produce): many exact ties, so the kept
    # set depends on vLLM's exact order of operations (ascending sort, its cumsum, `<= 1 - p`)
    g = torch.Generator().manual_seed(7)
    logits = (torch.randn(64, 32000, generator=g) * 2.5).bfloat16().float()
    truncation = Truncation(top_k=top_k or -1, top_p=top_p or 1.0)
    ours = torch.isfinite(truncate_logits(logits, truncation))
    theirs = vllm_kept(logits, top_k, top_p)
    assert int((ours != theirs).any(dim=-1).sum()) == 0, "rows whose kept set differs from vLLM's"
    labels = theirs.float().multinomial(1, generator=g).squeeze(-1)  # tokens vLLM could sample
    lp, _ = log_probs_with_topk(logits, labels, truncation=truncation, chunk=16)
    assert torch.isfinite(lp).all()


def test_a_sampled_token_the_trainers_truncation_excludes_is_masked_and_counted_never_nan():
    from openrlhf_offpolicy.integration.runtime.loss import policy_loss_class

    request = OffPolicySettings(loss_kwargs={"enable_vllm_is_correction": True, "vllm_is_correction_type": "tis"},
                                match_rollout_sampling=True, rollout_top_p=0.9)
    upstream_kwargs = dict(clip_eps_low=0.2, clip_eps_high=0.2, policy_loss_type="ppo")
    loss_fn = policy_loss_class(resolved(request, **upstream_kwargs))(**upstream_kwargs)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 40, generator=g, requires_grad=True)
    truncation = Truncation(top_p=0.9)
    kept = torch.isfinite(truncate_logits(logits.detach().reshape(-1, 40), truncation)).view(2, 6, 40)
    labels = kept.float().argmax(-1)  # kept tokens ...
    labels[0, 2] = (~kept[0, 2]).float().argmax()  # ... but two the trainer's truncation excludes
    labels[1, 4] = (~kept[1, 4]).float().argmax()
    log_probs, _ = log_probs_with_topk(logits, labels, truncation=truncation)
    old = log_probs.detach().clone()
    assert torch.isneginf(log_probs[0, 2]) and torch.isneginf(log_probs[1, 4])
    action_mask = torch.ones(2, 6)
    action_mask[1, 5] = 0
    loss, *_ = loss_fn(log_probs, old, torch.randn(2, 6, generator=g), action_mask=action_mask,
                       rollout_log_probs=old.clamp(min=-30.0) - 0.01)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert logits.grad[0, 2].abs().sum() == 0 and logits.grad[1, 4].abs().sum() == 0  # out of the loss
    stats = loss_fn.statistics
    assert stats["sampling/excluded_token_frac"].total.item() == 2
    assert loss_fn.metrics["sampling/excluded_token_frac"].item() == pytest.approx(2 / 11)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_upstreams_kl_to_the_reference_is_zero_not_nan_on_a_token_outside_the_trainers_truncation(estimator):
    from openrlhf.trainer.ppo_utils import experience_maker
    from openrlhf.trainer.ray import ppo_actor

    from openrlhf_offpolicy.integration.runtime import patches
    log_probs = torch.tensor([[-1.0, float("-inf"), -2.0]])
    base = torch.tensor([[-1.5, -3.0, -2.0]])
    patches.install(OffPolicySettings(loss_kwargs={}, match_rollout_sampling=True, rollout_top_p=0.9))
    try:
        for module in (experience_maker, ppo_actor):
            kl = module.compute_approx_kl(log_probs, base, kl_estimator=estimator)
            assert torch.isfinite(kl).all() and kl[0, 1] == 0
            full = module.compute_approx_kl(log_probs[:, [0, 2]], base[:, [0, 2]], kl_estimator=estimator)
            assert torch.equal(kl[:, [0, 2]], full)
    finally:
        patches.undo()
