"""The rollout's top-K log-probs from vLLM-shaped outputs to the loss, through upstream's own code.

vLLM's engine cannot run on CPU: its outputs are built here with vLLM's own ``RequestOutput`` /
``CompletionOutput`` classes and log-prob containers, filled by vLLM 0.29's own
``append_logprobs_for_next_position`` from sampler-shaped rows ``[sampled, top-1 .. top-K]``:
``FlatLogprobs`` (what the rollout requests) or per-token dicts of the top-K entries plus the sampled
token when it is not among them. Everything after
that is upstream code with our patches: the single-turn executor, the samples generator,
``Experience.concat_experiences``, the replay buffer, the ``Actor`` forward and
``ActorPPOTrainer.training_step``.
"""

import asyncio
import math

import numpy as np
import pytest
import torch
from helpers import micro_step_metrics
from vllm import SamplingParams
from vllm.logprobs import FlatLogprobs, Logprob, append_logprobs_for_next_position, create_sample_logprobs
from vllm.outputs import CompletionOutput, RequestOutput

from openrlhf_offpolicy.integration.runtime import patches
from openrlhf_offpolicy.integration.runtime.settings import OffPolicySettings
from openrlhf_offpolicy.corrections.topk import LOG_PROB_FLOOR
from openrlhf_offpolicy.integration.runtime.topk import (
    EMPTY_ID,
    MaxLogprobsActor,
    _flat_rollout_arrays,
    rollout_arrays,
    topk_rows,
)

K = 3


@pytest.fixture
def topk_patched():
    patches.install(OffPolicySettings(loss_kwargs={}, policy_loss_type="dppo", logprobs_topk=K))
    yield
    patches.undo()


def entry(logprob, rank):
    return Logprob(logprob=logprob, rank=rank, decoded_token=None)


def test_topk_rows_converts_vllm_dicts_including_the_extra_sampled_token_and_short_rows():
    per_token = [
        {5: entry(-0.1, 1), 7: entry(-2.0, 2), 9: entry(-3.0, 3)},  # sampled token inside the top-3
        {5: entry(-0.2, 1), 7: entry(-1.9, 2), 2: entry(-2.5, 3), 11: entry(-6.0, 17)},  # sampled 11 outside
        {4: entry(0.0, 1)},  # fewer than K entries
        {1: entry(-0.5, 1), 8: entry(-1.0, 2), 3: entry(float("-inf"), 3)},  # a filtered token
    ]
    ids, lps = topk_rows(per_token, K)
    assert ids == [[5, 7, 9], [5, 7, 2], [4, EMPTY_ID, EMPTY_ID], [1, 8, 3]]
    assert lps[1] == [-0.2, -1.9, -2.5] and lps[2] == [0.0, 0.0, 0.0]
    assert lps[3][:2] == [-0.5, -1.0] and lps[3][2] == -1e4
    flat = FlatLogprobs()
    for row in per_token:
        flat.append(row)
    assert topk_rows(flat, K) == (ids, lps)
    no_ranks = [{tid: Logprob(lp.logprob) for tid, lp in row.items()} for row in per_token[:2]]
    assert topk_rows(no_ranks, K)[0] == [[5, 7, 9], [5, 7, 2]], "without ranks: the K most likely"


def test_vllm_engines_are_created_with_max_logprobs_of_at_least_k():
    seen = {}

    class FakeActor:
        @staticmethod
        def options(**options):
            class Handle:
                def remote(self, **kwargs):
                    seen.update(kwargs)

            return Handle()

    MaxLogprobsActor(FakeActor, 8).options(num_gpus=1).remote(model="m", max_logprobs=1)
    assert seen["max_logprobs"] == 8


class Tokenizer:
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False, return_tensors="pt"):
        return {"input_ids": torch.tensor([[int(t) for t in text.split()]])}


def sampler_rows(token_ids, vocab=16, seed=0, k=K, filtered=0):
    """Per generated token, what vLLM 0.29's sampler hands its output processor: ``[sampled, top-1 ..
    top-k]`` ids and processed log-probs and the sampled token's rank. ``filtered`` tokens get -inf
    (a top-k/top-p truncation), so ties appear among the top-k."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for token in token_ids:
        lp = torch.log_softmax(torch.randn(vocab, generator=g) * 2, dim=-1)
        if filtered:
            keep = set(lp.argsort(descending=True)[: vocab - filtered].tolist()) | {token}
            lp = torch.tensor([float(v) if i in keep else float("-inf") for i, v in enumerate(lp.tolist())])
            lp = lp - torch.logsumexp(lp, 0)
        order = lp.argsort(descending=True, stable=True).tolist()
        rank = order.index(token) + 1
        rows.append(([token] + order[:k], [float(lp[token])] + [float(lp[i]) for i in order[:k]], rank))
    return rows


def vllm_logprobs(rows, flat, k=K):
    """The ``CompletionOutput.logprobs`` vLLM 0.29 builds from those rows (its own functions)."""
    logprobs = create_sample_logprobs(flat)
    for ids, lps, rank in rows:
        append_logprobs_for_next_position(logprobs, ids, lps, [None] * len(ids), rank, k)
    return logprobs


def vllm_request(prompt_ids, token_ids, vocab=16, seed=0, flat=False, filtered=0):
    """A RequestOutput with vLLM-built log-probs from a random sampling distribution, and the dicts."""
    rows = sampler_rows(token_ids, vocab, seed, filtered=filtered)
    completion = CompletionOutput(index=0, text="", token_ids=token_ids, cumulative_logprob=None,
                                  logprobs=vllm_logprobs(rows, flat), finish_reason="stop")
    return RequestOutput("r", None, prompt_ids, None, [completion], finished=True), vllm_logprobs(rows, False)


class FakeEngine:
    def __init__(self, request):
        self.request = request

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        return self.request


def rollout_response(prompt_ids, token_ids, seed, flat=True, filtered=0):
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    request, rows = vllm_request(prompt_ids, token_ids, seed=seed, flat=flat, filtered=filtered)
    params = SamplingParams(logprobs=K, max_tokens=len(token_ids))
    executor = SingleTurnAgentExecutor(None)
    prompt = " ".join(map(str, prompt_ids))
    response = asyncio.run(executor.execute(prompt, "label", params, 64, Tokenizer(), FakeEngine(request)))
    return response, rows


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "dicts"])
def test_executor_adds_aligned_topk_rows_with_empty_prompt_slots(topk_patched, flat):
    response, rows = rollout_response([3, 4, 5], [7, 1, 9, 2], seed=1, flat=flat)
    assert len(response["rollout_topk_ids"]) == len(response["observation_tokens"]) == 7
    assert response["rollout_topk_ids"][:3].tolist() == [[EMPTY_ID] * K] * 3
    for j, row in enumerate(rows):
        top = sorted((lp.rank, tid) for tid, lp in row.items() if lp.rank <= K)
        assert response["rollout_topk_ids"][3 + j].tolist() == [tid for _, tid in top]
        sampled = response["observation_tokens"][3 + j]
        assert math.isclose(response["rollout_log_probs"][3 + j], row[sampled].logprob)


@pytest.mark.parametrize("filtered", [0, 15], ids=["full", "truncated-rollout"])
def test_flat_and_dict_logprobs_give_identical_experience_tensors(topk_patched, filtered):
    """vLLM's FlatLogprobs (array slicing) and its dicts (per-token path): the same response and experience."""
    prompt, tokens = [3, 4, 5], [7, 1, 9, 2, 7, 7, 0, 15]
    flat, _ = rollout_response(prompt, tokens, seed=4, flat=True, filtered=filtered)
    dicts, _ = rollout_response(prompt, tokens, seed=4, flat=False, filtered=filtered)
    assert flat["rollout_log_probs"] == dicts["rollout_log_probs"]
    for key in ("rollout_topk_ids", "rollout_topk_log_probs"):
        assert flat[key].dtype == dicts[key].dtype and np.array_equal(flat[key], dicts[key]), key
    if filtered:
        assert (flat["rollout_topk_log_probs"] == LOG_PROB_FLOOR).any(), "the filtered tokens are floored"
    a, b = experience_from(flat, truncate=9), experience_from(dicts, truncate=9)
    for key in ("sequences", "action_mask", "rollout_log_probs", "rollout_topk_ids", "rollout_topk_log_probs"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key


def test_rollout_arrays_match_the_per_token_reading_of_vllm_flat_logprobs():
    """Independent reference: each position read through FlatLogprobs' own dict view."""
    tokens = [int(t) for t in torch.randint(0, 32, (50,), generator=torch.Generator().manual_seed(3))]
    rows = sampler_rows(tokens, vocab=32, seed=5, k=5, filtered=20)
    flat = vllm_logprobs(rows, flat=True, k=5)
    arrays = _flat_rollout_arrays(flat, tokens, 5)
    assert arrays is not None, "vLLM's layout takes the slicing path"
    for j, token in enumerate(tokens):
        position = flat[j]  # vLLM's own {id: Logprob} view of that position
        assert arrays.sampled[j] == np.float32(position[token].logprob)
        top = sorted((lp.rank, tid) for tid, lp in position.items() if lp.rank <= 5)
        assert arrays.topk_ids[j].tolist() == [tid for _, tid in top]
        expected = [max(position[tid].logprob, LOG_PROB_FLOOR) for _, tid in top]
        assert arrays.topk_log_probs[j].tolist() == pytest.approx(expected, rel=1e-6)


def test_flat_logprobs_of_another_layout_take_the_per_token_path():
    """A FlatLogprobs whose positions differ in width (built from dicts) is still read exactly."""
    tokens = [7, 1, 9]
    dicts = vllm_logprobs(sampler_rows(tokens), flat=False)
    flat = FlatLogprobs()
    for row in dicts:
        flat.append(row)  # the sampled token inside the top-K is stored once: widths K and K + 1
    assert len({e - s for s, e in zip(flat.start_indices, flat.end_indices)}) > 1
    a, b = rollout_arrays(flat, tokens, K), rollout_arrays(dicts, tokens, K)
    assert np.array_equal(a.sampled, b.sampled) and np.array_equal(a.topk_ids, b.topk_ids)
    assert np.array_equal(a.topk_log_probs, b.topk_log_probs)


@pytest.mark.parametrize("multi_turn", [False, True], ids=["single-turn", "multi-turn"])
def test_upstream_executors_read_flat_logprobs_like_dicts(multi_turn):
    """Unpatched upstream executors (what runs without our executor patch, e.g. multi-turn agents)
    produce the same rollout_log_probs from FlatLogprobs as from dicts."""
    from openrlhf.utils.agent import AgentInstanceBase, MultiTurnAgentExecutor, SingleTurnAgentExecutor

    class OneStep(AgentInstanceBase):
        def __init__(self, *args, **kwargs):
            pass

        async def step(self, states, **kwargs):
            return {"rewards": torch.tensor(0.0), "environment_feedback": "", "done": True}

    results = []
    for flat in (True, False):
        request, _ = vllm_request([3, 4], [7, 1, 9, 2], seed=6, flat=flat, filtered=4)
        executor = MultiTurnAgentExecutor(OneStep) if multi_turn else SingleTurnAgentExecutor(None)
        params = SamplingParams(logprobs=K, max_tokens=4, flat_logprobs=flat)
        response = asyncio.run(executor.execute("3 4", "label", params, 64, Tokenizer(), FakeEngine(request)))
        results.append(response["rollout_log_probs"])
    assert results[0] == results[1] and len(results[0]) == 6


def test_rollout_sampling_params_request_flat_logprobs(topk_patched):
    from openrlhf.trainer.ppo_utils import samples_generator

    params = samples_generator.SamplingParams(temperature=1.0, max_tokens=8)
    assert params.logprobs == K and params.flat_logprobs is True


def test_executor_without_requested_logprobs_is_upstreams(topk_patched):
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    request, _ = vllm_request([3, 4], [7, 1], seed=0, flat=True)
    params = SamplingParams(max_tokens=2)
    response = asyncio.run(SingleTurnAgentExecutor(None).execute("3 4", "l", params, 64, Tokenizer(),
                                                                 FakeEngine(request)))
    assert response["rollout_log_probs"] is None and "rollout_topk_ids" not in response


def experience_from(response, truncate=64):
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

    generator = SamplesGenerator.__new__(SamplesGenerator)
    return generator._process_response_into_experience(response, max_len=truncate)


def test_samples_become_time_last_experience_fields_that_survive_truncation(topk_patched):
    from openrlhf.trainer.ppo_utils.experience import Experience

    response, _ = rollout_response([3, 4, 5], [7, 1, 9, 2], seed=2)
    exp = experience_from(response)
    assert type(exp).__name__ == "TopKExperience" and Experience.__name__ == "TopKExperience"
    assert exp.rollout_topk_ids.shape == (1, K, 6) and exp.rollout_topk_ids.dtype == torch.int32
    assert exp.rollout_topk_ids[0, :, 2:].T.tolist() == response["rollout_topk_ids"][3:].tolist()
    truncated = experience_from(response, truncate=5)
    assert truncated.rollout_topk_ids.shape == (1, K, 4) == (1, K, truncated.rollout_log_probs.shape[1])


def test_concat_replay_buffer_and_collate_keep_the_topk_aligned(topk_patched, monkeypatch):
    from openrlhf.trainer.ppo_utils.experience import Experience
    from openrlhf.trainer.ppo_utils.replay_buffer import NaiveReplayBuffer

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    exps, responses = [], []
    for seed, (prompt, tokens) in enumerate([([3, 4], [7, 1, 9]), ([5, 6, 8], [2, 2]), ([1], [4, 4, 4, 4])]):
        response, _ = rollout_response(prompt, tokens, seed=seed)
        responses.append(response)
        exps.append(experience_from(response))
    batch = Experience.concat_experiences(exps, pad_token_id=0)
    assert batch.rollout_topk_ids.shape == (3, K, 4) and batch.rollout_log_probs.shape == (3, 4)
    buffer = NaiveReplayBuffer(sample_batch_size=3, cpu_offload=True)
    buffer.append(batch)
    for item, response in zip(buffer.items, responses):
        n = len(response["observation_tokens"]) - 1
        assert item.rollout_topk_ids.shape == (K, n), "padding was trimmed along time, not K"
        assert item.rollout_topk_ids.T.tolist() == response["rollout_topk_ids"][1:].tolist()
    collated = buffer.collate_fn(buffer.items)
    assert torch.equal(collated.rollout_topk_ids, batch.rollout_topk_ids)
    assert torch.equal(collated.rollout_topk_log_probs, batch.rollout_topk_log_probs)


# --------------------------------------------------------------------------- training side
from helpers import MINIMAL_UPSTREAM_ARGV, CPUStrategy  # noqa: E402


def actor(model_dir, packing):
    from openrlhf.models import Actor

    return Actor(model_dir, attn_implementation="eager", param_dtype="bf16", packing_samples=packing)


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_actor_forward_gathers_pi_theta_at_the_topk_ids_from_its_own_logits(topk_patched, tiny_model_dir, packing):
    """Against log_softmax(logits).gather(ids) on the very logits the real Actor forward produced."""
    from openrlhf_offpolicy.integration.runtime.loss import PENDING, PendingTopK

    model = actor(tiny_model_dir, packing)
    g = torch.Generator().manual_seed(0)
    B, T, K_ = 3, 9, 4
    sequences = torch.randint(0, 64, (B, T), generator=g)
    attention_mask = torch.ones(B, T, dtype=torch.long)
    attention_mask[1, -3:] = 0  # right padding of a shorter sample
    attention_mask[2, -1:] = 0
    action_mask = torch.ones(B, T - 1, dtype=torch.bool)
    ids = torch.randint(0, 64, (B, T - 1, K_), generator=g)
    ids[0, 2, 1] = EMPTY_ID
    pending = PendingTopK(ids=ids, rollout_log_probs=torch.zeros(B, T - 1, K_), action_ids=sequences[:, 1:])
    token = PENDING.set(pending)
    try:
        log_probs, output = model(sequences, action_mask, attention_mask=attention_mask, return_output=True)
    finally:
        PENDING.reset(token)
    reference = torch.log_softmax(output["logits"].float(), dim=-1)
    if packing:  # [1, nnz, V] over the non-padding positions, row-major
        rows = torch.nonzero(attention_mask.flatten()).flatten()
        full = torch.zeros(B * T, reference.shape[-1])
        full[rows] = reference[0]
        reference = full.view(B, T, -1)
    expected = reference[:, :-1].gather(-1, ids.clamp(min=0))
    on = attention_mask[:, 1:].bool().unsqueeze(-1) & (ids >= 0)
    assert pending.log_probs.shape == (B, T - 1, K_)
    assert torch.allclose(pending.log_probs[on], expected[on], atol=1e-5)
    expected_labels = reference[:, :-1].gather(-1, sequences[:, 1:].unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(log_probs[attention_mask[:, 1:].bool()], expected_labels[attention_mask[:, 1:].bool()],
                          atol=1e-5), "the sampled-token log-probs are unchanged by the fused gather"


def test_from_vllm_shaped_rollout_to_the_dppo_topk_loss_and_its_gradient(topk_patched, gloo, tiny_model_dir,
                                                                        monkeypatch):
    """End to end: vLLM-shaped outputs -> experience -> replay buffer -> real training_step -> loss."""
    from openrlhf.trainer.ppo_utils.experience import Experience
    from openrlhf.trainer.ppo_utils.replay_buffer import NaiveReplayBuffer
    from openrlhf.trainer.ray import ppo_actor

    from openrlhf_offpolicy.cli.train_ppo_ray import parse
    from openrlhf_offpolicy.integration.driver.launch import run
    from openrlhf_offpolicy.integration.runtime.upstream_args import given_flags

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    cli = MINIMAL_UPSTREAM_ARGV + ["--policy_loss_type", "dppo", "--dppo_divergence", "topk_tv", "--dppo_delta",
                                   "0.05", "--vllm_logprobs_topk", str(K)]
    _, settings, upstream_argv = parse(cli)
    args, config, settings = run(upstream_argv, settings, dry_run=True, explicit_flags=given_flags(upstream_argv))
    patches.install(settings)
    model = actor(tiny_model_dir, packing=False)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    trainer = ppo_actor.ActorPPOTrainer(CPUStrategy(args), model, ema_model=None, actor_optim=optim,
                                        actor_scheduler=torch.optim.lr_scheduler.LambdaLR(optim, lambda s: 1.0),
                                        micro_train_batch_size=2, vllm_engines=None)
    assert trainer.actor_loss_fn.config.param("dppo_divergence") == "topk_tv"

    exps = []
    for seed, (prompt, tokens) in enumerate([([3, 4], [7, 1, 9]), ([5, 6, 8], [2, 2]), ([1], [4, 4, 4, 4])]):
        response, _ = rollout_response(prompt, tokens, seed=seed)
        exps.append(experience_from(response))
    batch = Experience.concat_experiences(exps, pad_token_id=0)
    with torch.no_grad():
        old = model(batch.sequences, batch.action_mask, attention_mask=batch.attention_mask).float()
    batch.action_log_probs, batch.base_action_log_probs = old, old.clone()
    batch.advantages = torch.tensor([[1.0], [-1.0], [0.5]]).expand_as(old).clone() * batch.action_mask
    buffer = NaiveReplayBuffer(sample_batch_size=3, cpu_offload=True)
    buffer.append(batch)
    micro_batch = buffer.collate_fn(buffer.items)

    # Reference DPPO mask from the model's own log-softmax, the experience's mu top-K and a loop.
    with torch.no_grad():
        logits = model.model(micro_batch.sequences, attention_mask=micro_batch.attention_mask,
                             position_ids=micro_batch.attention_mask.long().cumsum(-1) - 1)["logits"].float()
    pi_all = torch.log_softmax(logits, dim=-1)[:, :-1].exp()
    expected_masked, n_tokens = 0, 0
    for b in range(3):
        for t in range(micro_batch.action_mask.shape[1]):
            if not micro_batch.action_mask[b, t]:
                continue
            a = int(micro_batch.sequences[b, t + 1])
            ids = [int(i) for i in micro_batch.rollout_topk_ids[b, :, t] if i >= 0]
            mu_top = dict(zip(ids, micro_batch.rollout_topk_log_probs[b, :, t].exp().tolist()))
            mu_a = math.exp(float(micro_batch.rollout_log_probs[b, t]))
            support = list(dict.fromkeys(ids + [a]))
            p = [mu_top.get(i, mu_a) for i in support]
            q = [float(pi_all[b, t, i]) for i in support]
            p.append(max(1 - sum(p), 1e-12))
            q.append(max(1 - sum(q), 1e-12))
            tv = 0.5 * sum(abs(x - y) for x, y in zip(p, q))
            ratio, adv = float(pi_all[b, t, a]) / mu_a, float(micro_batch.advantages[b, t])
            outward = (adv > 0 and ratio > 1) or (adv < 0 and ratio < 1)
            expected_masked += int(outward and tv > 0.05)
            n_tokens += 1

    calls = []
    original = type(trainer.actor_loss_fn).forward

    def spy(self, *a, **kw):
        out = original(self, *a, **kw)
        calls.append(self.metrics)
        return out

    monkeypatch.setattr(type(trainer.actor_loss_fn), "forward", spy)
    before = [p.detach().clone() for p in model.parameters()]
    status = trainer.training_step(micro_batch, kl_ctl=0.0, step=0)
    logged = micro_step_metrics(trainer, status)
    assert calls and "dppo/masked_frac" in logged
    assert 0 < expected_masked < n_tokens, "the setting must mask some tokens and keep others"
    assert logged["dppo/masked_frac"] == pytest.approx(expected_masked / n_tokens, abs=1e-6)
    assert torch.isfinite(status["metrics"]["policy_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
