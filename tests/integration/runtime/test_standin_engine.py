"""The CPU stand-in for vLLM's ``AsyncLLMEngine`` (integration/runtime/standin_engine.py), driven directly.

References are independent: a float64 log-softmax of a fresh full-sequence forward of the saved
model, with temperature and top-k / top-p truncation written here from vLLM's definition (keep the
k largest, then the smallest set of largest probabilities whose sum reaches p; the top token always).
"""

import asyncio
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from openrlhf_offpolicy.integration.runtime import standin_engine
vllm = pytest.importorskip("vllm")
from vllm import SamplingParams  # noqa: E402
from vllm.logprobs import FlatLogprobs  # noqa: E402
from vllm.outputs import CompletionOutput, RequestOutput  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOCAB = 64
PROMPT = [3, 17, 5, 42, 8]


def _use_mode(monkeypatch, mode, scale=0.0):
    monkeypatch.setattr(standin_engine, "mismatch_settings", lambda: (mode, scale))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Qwen2 whose end-of-sequence token is the greedy first token after PROMPT."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # peaked enough that top-p truncation keeps a handful of tokens
        first = int(model(torch.tensor([PROMPT])).logits[0, -1].argmax())
    model.config.eos_token_id = first
    model.generation_config.eos_token_id = first
    path = tmp_path_factory.mktemp("standin-qwen2")
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def dsv3_dir(tmp_path_factory):
    """A tiny DeepSeek-V3-style model: layer 0 dense (first_k_dense_replace=1), layers 1-2 MoE."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    from openrlhf_offpolicy.models.routing_replay import find_routers

    config = DeepseekV3Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                              num_key_value_heads=4, max_position_embeddings=64, first_k_dense_replace=1,
                              intermediate_size=48, moe_intermediate_size=16, n_routed_experts=8,
                              num_experts_per_tok=2, n_group=2, topk_group=1, kv_lora_rank=8, q_lora_rank=None,
                              qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, n_shared_experts=1)
    torch.manual_seed(1)
    model = DeepseekV3ForCausalLM(config).eval()
    with torch.no_grad():
        for router in find_routers(model):
            router.weight.normal_(0.0, 0.5)
    path = tmp_path_factory.mktemp("standin-dsv3")
    model.save_pretrained(path)
    return str(path)


def _reference_logits(path, ids):
    """Logits of every position after the first of ``ids``, from one fresh full-sequence forward, float64."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, :-1].double()


def _truncated_log_softmax(logits, temperature, top_k, top_p):
    """log-softmax of logits / T over the top-k tokens, then the smallest top-p nucleus (float64)."""
    scaled = logits.double() / temperature
    order = torch.argsort(scaled, descending=True)
    keep = torch.zeros_like(scaled, dtype=torch.bool)
    if top_k is not None and top_k > 0:
        keep[order[:top_k]] = True
    else:
        keep[:] = True
    probs = torch.where(keep, scaled, torch.tensor(float("-inf"), dtype=torch.float64)).softmax(-1)
    total, nucleus = 0.0, torch.zeros_like(keep)
    for tid in order.tolist():
        if not keep[tid]:
            continue
        nucleus[tid] = True  # the first (largest) token is always kept
        total += float(probs[tid])
        if total >= top_p:
            break
    kept = keep & nucleus
    return torch.where(kept, scaled, torch.tensor(float("-inf"), dtype=torch.float64)).log_softmax(-1)


def _sampled_logprobs(completion):
    return [position[token].logprob for token, position in zip(completion.token_ids, completion.logprobs)]


def test_generate_answers_with_vllm_output_classes_and_the_request_id(model_dir, monkeypatch):
    _use_mode(monkeypatch, "none")
    engine = standin_engine.StandInEngine(model=model_dir, dtype="float32")
    params = SamplingParams(temperature=1.0, max_tokens=4, seed=5, ignore_eos=True)

    async def first():
        async for out in engine.generate({"prompt_token_ids": PROMPT}, params, "req-7"):
            return out

    out = asyncio.run(first())
    assert isinstance(out, RequestOutput) and out.finished and out.request_id == "req-7"
    assert out.prompt_token_ids == PROMPT
    (completion,) = out.outputs
    assert isinstance(completion, CompletionOutput)
    assert len(completion.token_ids) == 4 and completion.finish_reason == "length"
    assert all(0 <= t < VOCAB for t in completion.token_ids)
    assert completion.logprobs is None and completion.routed_experts is None
    assert engine.output_processor.get_num_unfinished_requests() == 0


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, 1.0), (0.7, 8, 1.0), (1.3, None, 0.8),
                                                     (0.9, 6, 0.7)])
def test_processed_logprobs_equal_a_float64_truncated_log_softmax_of_the_full_forward(
        model_dir, monkeypatch, temperature, top_k, top_p):
    _use_mode(monkeypatch, "none")
    engine = standin_engine.StandInEngine(model=model_dir, dtype="float32", logprobs_mode="processed_logprobs")
    params = SamplingParams(temperature=temperature, top_k=top_k or 0, top_p=top_p, max_tokens=8, seed=11,
                            logprobs=0, ignore_eos=True)
    completion = engine._generate(PROMPT, params, "r0").outputs[0]
    tokens = list(completion.token_ids)
    logits = _reference_logits(model_dir, PROMPT + tokens)[len(PROMPT) - 1:]
    expected = [float(_truncated_log_softmax(row, temperature, top_k, top_p)[t]) for row, t in zip(logits, tokens)]
    got = _sampled_logprobs(completion)
    assert got == pytest.approx(expected, abs=2e-5)
    assert completion.cumulative_logprob == pytest.approx(sum(expected), abs=1e-4)
    if top_p < 1.0:  # the truncation renormalises: a kept token's log-prob is above its untruncated one
        plain = [float((row / temperature).log_softmax(-1)[t]) for row, t in zip(logits, tokens)]
        assert all(g > p for g, p in zip(got, plain))


def test_raw_logprobs_ignore_temperature_and_truncation(model_dir, monkeypatch):
    _use_mode(monkeypatch, "none")
    engine = standin_engine.StandInEngine(model=model_dir, dtype="float32", logprobs_mode="raw_logprobs")
    params = SamplingParams(temperature=0.6, top_p=0.5, max_tokens=6, seed=2, logprobs=0, ignore_eos=True)
    completion = engine._generate(PROMPT, params, "r0").outputs[0]
    tokens = list(completion.token_ids)
    logits = _reference_logits(model_dir, PROMPT + tokens)[len(PROMPT) - 1:]
    expected = [float(row.log_softmax(-1)[t]) for row, t in zip(logits, tokens)]
    assert _sampled_logprobs(completion) == pytest.approx(expected, abs=2e-5)


def test_kv_cache_decode_logprobs_in_float32_agree_with_the_full_forward(model_dir, monkeypatch):
    """``bf16`` mode reports the engine's incremental decode: in a float32 engine, equal to rounding."""
    _use_mode(monkeypatch, "bf16")
    engine = standin_engine.StandInEngine(model=model_dir, dtype="float32", logprobs_mode="processed_logprobs")
    params = SamplingParams(temperature=1.0, max_tokens=8, seed=4, logprobs=0, ignore_eos=True)
    completion = engine._generate(PROMPT, params, "r0").outputs[0]
    tokens = list(completion.token_ids)
    logits = _reference_logits(model_dir, PROMPT + tokens)[len(PROMPT) - 1:]
    expected = [float(row.log_softmax(-1)[t]) for row, t in zip(logits, tokens)]
    assert _sampled_logprobs(completion) == pytest.approx(expected, abs=1e-4)


def test_top_logprobs_carry_the_reference_top_tokens_with_ranks(model_dir, monkeypatch):
    _use_mode(monkeypatch, "none")
    engine = standin_engine.StandInEngine(model=model_dir, dtype="float32", logprobs_mode="processed_logprobs")
    params = SamplingParams(temperature=1.0, max_tokens=5, seed=8, logprobs=3, ignore_eos=True)
    completion = engine._generate(PROMPT, params, "r0").outputs[0]
    tokens = list(completion.token_ids)
    logits = _reference_logits(model_dir, PROMPT + tokens)[len(PROMPT) - 1:]
    for row, token, position in zip(logits, tokens, completion.logprobs):
        ref = row.log_softmax(-1)
        top3 = torch.argsort(ref, descending=True)[:3].tolist()
        assert set(top3) <= set(position) and len(position) in (3, 4)
        for rank, tid in enumerate(top3, start=1):
            assert position[tid].rank == rank
            assert position[tid].logprob == pytest.approx(float(ref[tid]), abs=2e-5)
        assert position[token].rank == 1 + int((ref > ref[token]).sum())


def test_more_logprobs_than_max_logprobs_is_refused_like_vllm(model_dir, monkeypatch):
    _use_mode(monkeypatch, "none")
    engine = standin_engine.StandInEngine(model=model_dir, dtype="float32", max_logprobs=2)
    with pytest.raises(ValueError, match="greater than max allowed"):
        engine._generate(PROMPT, SamplingParams(max_tokens=2, logprobs=3), "r0")


def test_flat_logprobs_hold_the_same_values_as_the_list_form(model_dir, monkeypatch):
    _use_mode(monkeypatch, "none")
    engine = standin_engine.StandInEngine(model=model_dir, dtype="float32", logprobs_mode="processed_logprobs")
    common = {"temperature": 0.8, "top_k": 10, "max_tokens": 6, "seed": 21, "logprobs": 0, "ignore_eos": True}
    listed = engine._generate(PROMPT, SamplingParams(**common), "a").outputs[0]
    flat = engine._generate(PROMPT, SamplingParams(**common, flat_logprobs=True), "b").outputs[0]
    assert isinstance(flat.logprobs, FlatLogprobs) and not isinstance(listed.logprobs, FlatLogprobs)
    assert list(flat.token_ids) == list(listed.token_ids)
    assert len(flat.logprobs) == len(listed.token_ids)
    for i, token in enumerate(flat.token_ids):
        start, end = flat.logprobs.start_indices[i], flat.logprobs.end_indices[i]
        assert flat.logprobs.token_ids[start] == token
        assert flat.logprobs.logprobs[start] == listed.logprobs[i][token].logprob
        assert end - start == 1


def test_a_fixed_seed_reproduces_the_sample_and_different_seeds_differ(model_dir, monkeypatch):
    _use_mode(monkeypatch, "none")
    engine = standin_engine.StandInEngine(model=model_dir, dtype="float32")
    runs = [tuple(engine._generate(PROMPT, SamplingParams(temperature=1.5, max_tokens=10, seed=s, ignore_eos=True),
                                   "r").outputs[0].token_ids) for s in (1, 1, 2, 3)]
    assert runs[0] == runs[1]
    assert len(set(runs[1:])) > 1


def test_stop_token_ends_the_request_unless_min_tokens_masks_it(model_dir, monkeypatch):
    _use_mode(monkeypatch, "none")
    engine = standin_engine.StandInEngine(model=model_dir, dtype="float32", logprobs_mode="processed_logprobs")
    from transformers import AutoConfig

    eos = AutoConfig.from_pretrained(model_dir).eos_token_id
    assert eos in engine.stop_ids
    stopped = engine._generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=6), "r0").outputs[0]
    assert list(stopped.token_ids) == [eos]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == eos

    params = SamplingParams(temperature=1.0, max_tokens=6, min_tokens=3, logprobs=2, seed=0, ignore_eos=True)
    masked = engine._generate(PROMPT, params, "r1").outputs[0]
    assert not set(masked.token_ids[:3]) & engine.stop_ids
    for position in masked.logprobs[:3]:  # the stop token is not among the reported top tokens there
        assert not set(position) & engine.stop_ids
    greedy_min = engine._generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=6, min_tokens=2),
                                  "r2").outputs[0]
    assert eos not in greedy_min.token_ids[:2] and len(greedy_min.token_ids) >= 3


def test_routed_experts_have_one_row_per_decoder_layer_with_the_dense_layer_zero(dsv3_dir, monkeypatch):
    from openrlhf_offpolicy.models.routing_replay import find_routers

    _use_mode(monkeypatch, "none")
    engine = standin_engine.StandInEngine(model=dsv3_dir, dtype="float32", enable_return_routed_experts=True)
    completion = engine._generate(PROMPT, SamplingParams(temperature=1.0, max_tokens=5, seed=3, ignore_eos=True),
                                  "r0").outputs[0]
    routed = completion.routed_experts
    tokens = list(completion.token_ids)
    assert routed.shape == (len(PROMPT) + len(tokens) - 1, 3, 2)
    assert str(routed.dtype) == "uint8"
    assert (routed[:, 0] == 0).all()
    moe = routed[:, 1:]
    assert (moe < 8).all()
    assert (moe[..., 0] != moe[..., 1]).all()

    # Row i is the routing of token i: the same top-k as a fresh full forward of the whole sequence.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(dsv3_dir, dtype=torch.float32, attn_implementation="eager").eval()
    captured = []
    for router in find_routers(model):
        router.register_forward_hook(lambda mod, inp, out: captured.append(out[2].detach()))
    with torch.no_grad():
        model(torch.tensor([(PROMPT + tokens)[:-1]]))
    expected = torch.stack([ids.reshape(routed.shape[0], -1) for ids in captured], dim=1)
    assert torch.equal(torch.from_numpy(moe.astype("int64")).sort(-1).values, expected.sort(-1).values)


def test_without_enable_return_routed_experts_no_routing_comes_back(dsv3_dir, monkeypatch):
    _use_mode(monkeypatch, "none")
    engine = standin_engine.StandInEngine(model=dsv3_dir, dtype="float32")
    completion = engine._generate(PROMPT, SamplingParams(max_tokens=2, seed=0), "r0").outputs[0]
    assert completion.routed_experts is None


def test_router_mode_noise_changes_the_engines_routing(dsv3_dir, monkeypatch):
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    _use_mode(monkeypatch, "none")
    clean = standin_engine.StandInEngine(model=dsv3_dir, dtype="float32", enable_return_routed_experts=True)
    _use_mode(monkeypatch, "router", 5.0)
    noisy = standin_engine.StandInEngine(model=dsv3_dir, dtype="float32", enable_return_routed_experts=True)
    a, b = (e._generate(PROMPT, params, "r").outputs[0].routed_experts for e in (clean, noisy))
    n = min(a.shape[0], b.shape[0])
    assert (a[:n, 1:] != b[:n, 1:]).any()
    assert (b[:, 0] == 0).all()


def _engine_params(engine):
    return {n: p.detach().clone() for n, p in engine.model.named_parameters()}


def test_weights_mode_perturbs_every_loaded_weight_and_none_keeps_them(model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    disk = dict(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).named_parameters())
    _use_mode(monkeypatch, "none")
    kept = _engine_params(standin_engine.StandInEngine(model=model_dir, dtype="float32"))
    _use_mode(monkeypatch, "weights", 0.02)
    noisy = _engine_params(standin_engine.StandInEngine(model=model_dir, dtype="float32"))
    for name, value in kept.items():
        assert torch.equal(value, disk[name].detach()), name
        delta = (noisy[name] - value).abs()
        if not value.any():  # the noise is relative to mean |w|: an all-zero bias stays zero
            assert not delta.any(), name
            continue
        assert (delta > 0).float().mean() > 0.9, name
        # relative scale: noise std 0.02 * mean |w|, so its mean |.| is far below mean |w|
        assert delta.mean() < 0.1 * value.abs().mean(), name


def test_update_weight_with_another_dtype_is_refused_like_vllm(model_dir, monkeypatch):
    _use_mode(monkeypatch, "none")
    engine = standin_engine.StandInEngine(model=model_dir, dtype="float32")
    name, param = next(iter(engine.model.named_parameters()))
    with pytest.raises(AssertionError, match="mismatch dtype"):
        engine._rpc_update_weight(name, torch.bfloat16, tuple(param.shape))


def test_unknown_collective_rpc_is_refused(model_dir, monkeypatch):
    _use_mode(monkeypatch, "none")
    engine = standin_engine.StandInEngine(model=model_dir, dtype="float32")
    with pytest.raises(NotImplementedError, match="no_such_method"):
        asyncio.run(engine.collective_rpc("no_such_method"))


def test_sleep_and_wake_up_toggle_is_sleeping(model_dir, monkeypatch):
    _use_mode(monkeypatch, "none")
    engine = standin_engine.StandInEngine(model=model_dir, dtype="float32")

    async def cycle():
        states = [await engine.is_sleeping()]
        await engine.sleep(level=1)
        states.append(await engine.is_sleeping())
        await engine.wake_up()
        states.append(await engine.is_sleeping())
        return states

    assert asyncio.run(cycle()) == [False, True, False]


_TRAINER = textwrap.dedent("""
    import sys, torch
    from openrlhf_offpolicy.integration.runtime.cpu_backend import GlooBroadcastGroup
    group = GlooBroadcastGroup("127.0.0.1", int(sys.argv[1]), 0, 2)
    weight = torch.randn(%s)
    torch.save(weight, sys.argv[2])
    group.broadcast(weight, src=0)
    group.close()
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["none", "weights"])
def test_weights_broadcast_by_the_trainer_land_in_the_engine(model_dir, monkeypatch, tmp_path, mode):
    """Trainer rank 0 (another process) broadcasts one weight; ``weights`` mode adds noise on arrival."""
    _use_mode(monkeypatch, mode, 0.02)
    engine = standin_engine.StandInEngine(model=model_dir, dtype="float32")
    name = "model.layers.0.mlp.up_proj.weight"
    shape = tuple(engine.model.get_parameter(name).shape)
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=REPO)
    trainer = subprocess.Popen([sys.executable, "-c", _TRAINER % (shape,), str(port), str(tmp_path / "sent.pt")],
                               env=env)
    try:
        asyncio.run(engine.collective_rpc("init_process_group", args=("127.0.0.1", port, 1, 2, "g")))
        asyncio.run(engine.collective_rpc("update_weight", args=(name, torch.float32, shape)))
        engine._weight_group.close()  # both sides leave together (GlooBroadcastGroup.close)
        assert trainer.wait(timeout=60) == 0
    finally:
        if trainer.poll() is None:
            trainer.kill()
    sent = torch.load(tmp_path / "sent.pt")
    got = engine.model.get_parameter(name).detach()
    if mode == "none":
        assert torch.equal(got, sent)
    else:
        assert not torch.equal(got, sent)
        assert (got - sent).abs().mean() < 0.1 * sent.abs().mean()
