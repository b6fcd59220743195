"""MoE routing replay through upstream's pipeline (``--routing_replay r2/r3``).

vLLM cannot run on CPU: its outputs are built with vLLM 0.29's own ``RequestOutput`` /
``CompletionOutput`` classes, with ``routed_experts`` shaped as 0.29 returns them
(``[prompt_len + response_len - 1, L, k]``, numpy uint8). Everything after that is upstream code
with our patches: the single-turn executor, the samples generator, ``concat_experiences``, the
replay buffer, ``BaseModelActor.execute_batch`` + ``Actor.forward`` (old log-probs) and
``ActorPPOTrainer.training_step`` on a tiny random Qwen3-MoE actor.
"""

import asyncio
import json

import numpy as np
import pytest
import torch
from helpers import MINIMAL_UPSTREAM_ARGV, CPUStrategy
from vllm import SamplingParams
from vllm.outputs import CompletionOutput, RequestOutput

from openrlhf_offpolicy.integration.runtime import patches
from openrlhf_offpolicy.integration.runtime.routing import RoutedExpertsActor, scoring_rows
from openrlhf_offpolicy.integration.runtime.settings import OffPolicySettings
from openrlhf_offpolicy.models.routing_replay import RoutingReplay, from_router_order, to_router_order

VOCAB, LAYERS, TOPK, EXPERTS = 64, 2, 2, 8


@pytest.fixture(scope="module")
def tiny_moe_dir(tmp_path_factory):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                            num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                            num_experts=EXPERTS, num_experts_per_tok=TOPK, norm_topk_prob=True,
                            max_position_embeddings=64)
    model = Qwen3MoeForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.normal_(0.0, 0.5)
    path = tmp_path_factory.mktemp("tiny-qwen3-moe")
    model.save_pretrained(path)
    return str(path)


def routing_patched(mode):
    patches.install(OffPolicySettings(loss_kwargs={}, routing_replay=mode))


@pytest.fixture
def r3():
    routing_patched("r3")
    yield
    patches.undo()


class Tokenizer:
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False, return_tensors="pt"):
        return {"input_ids": torch.tensor([[int(t) for t in text.split()]])}


def vllm_request(prompt_ids, token_ids, seed, layers=LAYERS):
    """vLLM 0.29's output: ``routed_experts`` has one row per decoder layer (``layers`` = the config's
    ``num_hidden_layers``, dense layers included) for prompt + response - 1 positions."""
    g = np.random.default_rng(seed)
    n = len(prompt_ids) + len(token_ids) - 1  # the last sampled token is never run through the model
    routed = np.stack([np.stack([g.permutation(EXPERTS)[:TOPK] for _ in range(layers)]) for _ in range(n)])
    completion = CompletionOutput(index=0, text="", token_ids=token_ids, cumulative_logprob=None, logprobs=None,
                                  routed_experts=routed.astype(np.uint8), finish_reason="stop")
    return RequestOutput("r", None, prompt_ids, None, [completion], finished=True), routed


class FakeEngine:
    def __init__(self, request):
        self.request = request

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        return self.request


def rollout_response(prompt_ids, token_ids, seed, layers=LAYERS):
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    request, routed = vllm_request(prompt_ids, token_ids, seed, layers)
    params = SamplingParams(max_tokens=len(token_ids))
    response = asyncio.run(SingleTurnAgentExecutor(None).execute(" ".join(map(str, prompt_ids)), "label", params, 64,
                                                                 Tokenizer(), FakeEngine(request)))
    return response, routed


def experience_from(response, truncate=64):
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

    return SamplesGenerator.__new__(SamplesGenerator)._process_response_into_experience(response, max_len=truncate)


ROLLOUTS = [([3, 4], [7, 1, 9]), ([5, 6, 8], [2, 2]), ([1], [4, 4, 4, 4])]


def test_vllm_engines_are_created_with_enable_return_routed_experts():
    seen = {}

    class FakeActor:
        @staticmethod
        def options(**options):
            class Handle:
                def remote(self, **kwargs):
                    seen.update(kwargs)

            return Handle()

    RoutedExpertsActor(FakeActor).options(num_gpus=1).remote(model="m")
    assert seen["enable_return_routed_experts"] is True


def test_executor_and_generator_carry_vllm_routed_experts_aligned_with_the_sequence(r3):
    response, routed = rollout_response([3, 4, 5], [7, 1, 9, 2], seed=1)
    assert np.array_equal(np.asarray(response["routed_experts"]), routed)
    exp = experience_from(response)
    assert type(exp).__name__ == "RoutedExperience"
    assert exp.routed_experts.shape == (1, LAYERS, TOPK, 7) and exp.routed_experts.dtype == torch.uint8
    assert exp.routed_experts[0, :, :, :6].permute(2, 0, 1).tolist() == routed.tolist()
    truncated = experience_from(response, truncate=5)
    assert truncated.routed_experts.shape[-1] == truncated.sequences.shape[-1] == 5


def test_a_routed_experts_length_other_than_prompt_plus_response_minus_one_is_refused(r3):
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    request, _ = vllm_request([3, 4], [7, 1], seed=0)
    request.outputs[0].routed_experts = request.outputs[0].routed_experts[1:]
    with pytest.raises(ValueError, match="routing for 2 tokens, expected 3"):
        asyncio.run(SingleTurnAgentExecutor(None).execute("3 4", "l", SamplingParams(max_tokens=2), 64, Tokenizer(),
                                                          FakeEngine(request)))


def test_concat_replay_buffer_and_collate_keep_routed_experts_aligned(r3, monkeypatch):
    from openrlhf.trainer.ppo_utils.experience import Experience
    from openrlhf.trainer.ppo_utils.replay_buffer import NaiveReplayBuffer

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    exps, rows = [], []
    for seed, (prompt, tokens) in enumerate(ROLLOUTS):
        response, routed = rollout_response(prompt, tokens, seed)
        exps.append(experience_from(response))
        rows.append(routed)
    batch = Experience.concat_experiences(exps, pad_token_id=0)
    assert batch.routed_experts.shape == (3, LAYERS, TOPK, 5) and batch.routed_experts.dtype == torch.uint8
    buffer = NaiveReplayBuffer(sample_batch_size=3, cpu_offload=True)
    buffer.append(batch)
    for item, routed in zip(buffer.items, rows):
        assert item.routed_experts.shape == (LAYERS, TOPK, len(routed) + 1), "padding trimmed along time"
        assert item.routed_experts[:, :, :-1].permute(2, 0, 1).tolist() == routed.tolist()
    collated = buffer.collate_fn(buffer.items)
    assert torch.equal(collated.routed_experts, batch.routed_experts)


# --------------------------------------------------------------------------- actor side
def moe_actor(model_dir, packing=False):
    from openrlhf.models import Actor

    return Actor(model_dir, attn_implementation="eager", param_dtype="bf16", packing_samples=packing)


def experts_seen(model):
    seen = []
    handles = [m.register_forward_pre_hook(lambda mod, args: seen.append(args[1].clone()))
               for m in model.modules() if type(m).__name__.endswith("Experts")]
    return seen, handles


class OldLogProbWorker:
    """Upstream's ``BaseModelActor.execute_batch`` around a forward shaped like PolicyModelActor's."""

    def __init__(self, actor):
        from openrlhf.trainer.ray.launcher import BaseModelActor

        self.actor = actor
        self.strategy = CPUStrategy(None)
        self.execute_batch = BaseModelActor.execute_batch.__get__(self)

    def forward(self, sequences, action_mask=None, attention_mask=None, packed_seq_lens=None,
                mm_train_inputs_list=None):
        with torch.no_grad():
            return self.actor(sequences, action_mask, attention_mask)


def padded_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    sequences = torch.randint(1, VOCAB, (3, 9), generator=g)
    attention_mask = torch.ones(3, 9, dtype=torch.long)
    attention_mask[1, -3:] = 0
    attention_mask[2, -1:] = 0
    sequences[attention_mask == 0] = 0
    action_mask = attention_mask[:, 5:].bool()
    return sequences, attention_mask, action_mask


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_r2_old_log_prob_forward_records_the_routing_it_used(tiny_moe_dir, packing):
    routing_patched("r2")
    try:
        actor = moe_actor(tiny_moe_dir, packing)
        sequences, attention_mask, action_mask = padded_batch()
        worker = OldLogProbWorker(actor)
        seen, handles = experts_seen(actor.model)
        data = {"sequences": [sequences], "action_mask": [action_mask], "attention_mask": [attention_mask],
                "record_routing": [True]}
        [(log_probs, routed)] = worker.execute_batch("forward", data, 0, 1)
        for h in handles:
            h.remove()
    finally:
        patches.undo()
    assert routed.shape == (3, LAYERS, TOPK, 9) and routed.dtype == torch.uint8
    rows = to_router_order(routed, attention_mask, packed=packing)
    for layer, used in enumerate(seen):
        assert torch.equal(used, rows[:, layer].long())
    plain = moe_actor(tiny_moe_dir, packing)(sequences, action_mask, attention_mask)
    assert torch.allclose(log_probs, plain, atol=1e-6)


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_r3_old_log_prob_forward_routes_through_the_rollout_experts(tiny_moe_dir, packing):
    routing_patched("r3")
    try:
        actor = moe_actor(tiny_moe_dir, packing)
        sequences, attention_mask, action_mask = padded_batch(seed=1)
        g = torch.Generator().manual_seed(3)
        routed = torch.stack([torch.randperm(EXPERTS, generator=g)[:TOPK] for _ in range(3 * 9 * LAYERS)])
        routed = routed.view(3, 9, LAYERS, TOPK).permute(0, 2, 3, 1).to(torch.uint8).contiguous()
        worker = OldLogProbWorker(actor)
        seen, handles = experts_seen(actor.model)
        data = {"sequences": [sequences], "action_mask": [action_mask], "attention_mask": [attention_mask],
                "routed_experts": [routed]}
        [log_probs] = worker.execute_batch("forward", data, 0, 1)
        for h in handles:
            h.remove()
        plain = actor(sequences, action_mask, attention_mask)
    finally:
        patches.undo()
    rows = to_router_order(routed, attention_mask, packed=packing)
    replayed = to_router_order(influential(attention_mask), attention_mask, packed=packing)[:, 0, 0]
    for layer, used in enumerate(seen):
        assert torch.equal(used[replayed], rows[replayed, layer].long())
    assert not torch.allclose(log_probs, plain, atol=1e-4), "random rollout routing must change the log-probs"


def save_moe_with_dense_layer(path, arch):
    """A tiny random MoE whose decoder layer 0 is dense: DeepSeek-V3 (``first_k_dense_replace=1``) or
    Qwen3-MoE (``mlp_only_layers=[0]``); 3 decoder layers, MoE routers at layers 1 and 2."""
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                  num_hidden_layers=3, num_attention_heads=4, num_experts_per_tok=TOPK, max_position_embeddings=64)
    torch.manual_seed(0)
    if arch == "deepseek_v3":
        config = tf.DeepseekV3Config(**common, num_key_value_heads=4, n_routed_experts=EXPERTS, n_group=2,
                                     topk_group=1, first_k_dense_replace=1, kv_lora_rank=8, q_lora_rank=None,
                                     qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, n_shared_experts=1)
        model = tf.DeepseekV3ForCausalLM(config)
    else:
        config = tf.Qwen3MoeConfig(**common, num_key_value_heads=2, head_dim=8, num_experts=EXPERTS,
                                   mlp_only_layers=[0], norm_topk_prob=True)
        model = tf.Qwen3MoeForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers[1:]:
            layer.mlp.gate.weight.normal_(0.0, 0.5)
    model.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("arch", ["deepseek_v3", "qwen3_moe"])
def test_r3_replays_vllms_decoder_layer_rows_on_an_moe_with_a_dense_first_layer(tmp_path, arch):
    from openrlhf.trainer.ppo_utils.experience import Experience

    model_dir = save_moe_with_dense_layer(tmp_path / arch, arch)
    routing_patched("r3")
    try:
        exps = [experience_from(rollout_response(prompt, tokens, seed, layers=3)[0])
                for seed, (prompt, tokens) in enumerate(ROLLOUTS)]
        batch = Experience.concat_experiences(exps, pad_token_id=0)
        actor = moe_actor(model_dir)
        worker = OldLogProbWorker(actor)
        seen, handles = experts_seen(actor.model)
        data = {"sequences": [batch.sequences], "action_mask": [batch.action_mask],
                "attention_mask": [batch.attention_mask], "routed_experts": [batch.routed_experts]}
        [log_probs] = worker.execute_batch("forward", data, 0, 1)
        for h in handles:
            h.remove()
    finally:
        patches.undo()
    assert batch.routed_experts.shape[1] == 3  # vLLM's rows, one per decoder layer, carried as they came
    rows = to_router_order(batch.routed_experts, batch.attention_mask, packed=False)
    where = to_router_order(influential(batch.attention_mask), batch.attention_mask, packed=False)[:, 0, 0]
    assert len(seen) == 2
    for used, decoder_layer in zip(seen, [1, 2]):
        assert torch.equal(used[where], rows[where, decoder_layer].long())
    assert torch.isfinite(log_probs).all()


def influential(attention_mask):
    from openrlhf_offpolicy.models.routing_replay import influential_positions

    return influential_positions(attention_mask)[:, None, None, :]


def test_real_training_step_replays_r3_routing_on_a_tiny_moe_actor_and_logs_exact_flip_rate(
        gloo, tiny_moe_dir, monkeypatch):
    from openrlhf.trainer.ppo_utils.experience import Experience
    from openrlhf.trainer.ppo_utils.replay_buffer import NaiveReplayBuffer
    from openrlhf.trainer.ray import ppo_actor

    from openrlhf_offpolicy.cli.train_ppo_ray import parse
    from openrlhf_offpolicy.integration.driver.launch import run
    from openrlhf_offpolicy.integration.runtime.upstream_args import given_flags

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    cli = MINIMAL_UPSTREAM_ARGV + ["--routing_replay", "r3", "--enable_vllm_is_correction"]
    _, settings, upstream_argv = parse(cli)
    args, _, settings = run(upstream_argv, settings, dry_run=True, explicit_flags=given_flags(upstream_argv))
    assert settings.routing_replay == "r3"
    patches.install(settings)
    try:
        model = moe_actor(tiny_moe_dir)
        optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
        trainer = ppo_actor.ActorPPOTrainer(CPUStrategy(args), model, ema_model=None, actor_optim=optim,
                                            actor_scheduler=torch.optim.lr_scheduler.LambdaLR(optim, lambda s: 1.0),
                                            micro_train_batch_size=2, vllm_engines=None)
        exps = []
        for seed, (prompt, tokens) in enumerate(ROLLOUTS):
            response, _ = rollout_response(prompt, tokens, seed)
            exps.append(experience_from(response))
        batch = Experience.concat_experiences(exps, pad_token_id=0)
        with torch.no_grad():
            old = model(batch.sequences, batch.action_mask, attention_mask=batch.attention_mask).float()
        batch.action_log_probs, batch.base_action_log_probs = old, old.clone()
        batch.rollout_log_probs = old + 0.01
        batch.advantages = torch.tensor([[1.0], [-1.0], [0.5]]).expand_as(old).clone() * batch.action_mask
        buffer = NaiveReplayBuffer(sample_batch_size=3, cpu_offload=True)
        buffer.append(batch)
        micro = buffer.collate_fn(buffer.items)

        # reference: the trainer's own routing (plain forward, same weights) vs the rollout's
        controller = RoutingReplay.attach(model.model)
        with torch.no_grad(), controller.record():
            model(micro.sequences, micro.action_mask, attention_mask=micro.attention_mask)
        own = from_router_order(controller.recorded(), micro.attention_mask, packed=False)
        scoring = scoring_rows(micro.action_mask, micro.attention_mask, packed=False).view(micro.sequences.shape)
        flipped = 0
        for b, t in scoring.nonzero().tolist():
            for layer in range(LAYERS):
                flipped += set(own[b, layer, :, t].tolist()) != set(micro.routed_experts[b, layer, :, t].tolist())
        n_tok = int(micro.action_mask.sum())

        seen, handles = experts_seen(model.model)
        before = [p.detach().clone() for p in model.parameters()]
        status = trainer.training_step(micro, kl_ctl=0.0, step=0)
        for h in handles:
            h.remove()
    finally:
        patches.undo()
    rows = to_router_order(micro.routed_experts, micro.attention_mask, packed=False)
    where = to_router_order(influential(micro.attention_mask), micro.attention_mask, packed=False)[:, 0, 0]
    assert len(seen) == LAYERS
    for layer, used in enumerate(seen):
        assert torch.equal(used[where], rows[where, layer].long())
    metrics = status["metrics"]
    assert status["weights"]["routing/flip_rate"] == "token"
    assert 0 < flipped < n_tok * LAYERS
    assert metrics["routing/flip_rate"].item() == pytest.approx(flipped / (n_tok * LAYERS), abs=1e-7)
    assert metrics["routing/replayed_frac"].item() == pytest.approx(1.0)
    changed = {name for (name, p), b in zip(model.named_parameters(), before) if not torch.equal(p, b)}
    assert any("mlp.gate.weight" in name for name in changed), "the router is trained under replay"


class LocalGroup:
    """A one-actor ``RayActorGroup`` run in-process: ``async_run_method_batch`` slices like upstream's."""

    def __init__(self, worker):
        self.worker = worker

    def async_run_method_batch(self, method_name, **kwargs):
        return [self.worker.execute_batch(method_name, kwargs, 0, len(next(iter(kwargs.values()))))]


@pytest.mark.parametrize("mode", ["r2", "r3"])
def test_experience_maker_sends_or_collects_each_micro_batchs_routing(tiny_moe_dir, monkeypatch, mode):
    """Upstream's real ``make_experience`` with the actor group in-process (``ray.get`` is identity)."""
    from types import SimpleNamespace

    from openrlhf.trainer.ppo_utils import experience_maker
    from openrlhf.trainer.ppo_utils.experience import Experience

    routing_patched(mode)
    try:
        monkeypatch.setattr(experience_maker, "ray", SimpleNamespace(get=lambda x: x, put=lambda x: x))
        actor = moe_actor(tiny_moe_dir)
        args = SimpleNamespace(ds=SimpleNamespace(ring_attn_size=1, tensor_parallel_size=1),
                               train=SimpleNamespace(colocate_all=False, colocate_actor_ref=False),
                               algo=SimpleNamespace(kl=SimpleNamespace(use_loss=False, estimator="k1"),
                                                    advantage=SimpleNamespace(estimator="group_norm")))
        maker = experience_maker.RemoteExperienceMaker(LocalGroup(OldLogProbWorker(actor)), None, None, None, None,
                                                       SimpleNamespace(args=args), None)
        samples_list = []
        for seeds in ([0, 1], [2]):
            exps = []
            for seed in seeds:
                response, _ = rollout_response(*ROLLOUTS[seed], seed=seed)
                exp = experience_from(response)
                exp.rewards = torch.tensor([1.0])
                if mode == "r2":
                    exp.routed_experts = None
                exps.append(exp)
            samples_list.append(Experience.concat_experiences(exps, pad_token_id=0))
        given = [s.routed_experts for s in samples_list]
        seen, handles = experts_seen(actor.model)
        out = maker.make_experience(samples_list)
        for h in handles:
            h.remove()
    finally:
        patches.undo()
    assert len(seen) == LAYERS * len(samples_list)
    for i, experience in enumerate(out):
        mask = experience.attention_mask
        rows = to_router_order(experience.routed_experts, mask, packed=False)
        where = to_router_order(influential(mask), mask, packed=False)[:, 0, 0]
        if mode == "r3":
            assert experience.routed_experts is given[i]
        for layer in range(LAYERS):
            assert torch.equal(seen[LAYERS * i + layer][where], rows[where, layer].long())
        assert experience.action_log_probs.shape == experience.action_mask.shape


# --------------------------------------------------------------------------- checks before Ray
@pytest.mark.parametrize("extra, message", [
    (["--routing_replay", "r3", "--vllm.num_engines", "0"], "vLLM is off"),
    (["--routing_replay", "r2", "--train.agent_func_path", "agent.py"], "multi-turn agent"),
    (["--routing_replay", "r3", "--ds.ring_attn_size", "2"], "ring attention"),
    (["--routing_replay", "r3", "--vllm_logprobs_topk", "2"], "--vllm_logprobs_topk"),
    (["--routing_replay", "r4"], "invalid choice"),
    (["--routing_replay", "r2", "--bypass_old_logprobs"], "--bypass_old_logprobs skips"),
])
def test_unsupported_routing_replay_combinations_exit_2_with_one_line(capsys, extra, message):
    from openrlhf_offpolicy.cli.train_ppo_ray import main

    assert main(MINIMAL_UPSTREAM_ARGV + extra + ["--dry_run"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_dense_local_model_is_rejected_before_ray_and_an_moe_one_accepted(capsys, tmp_path, tiny_moe_dir):
    from openrlhf_offpolicy.cli.train_ppo_ray import parse

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 8}))
    argv = MINIMAL_UPSTREAM_ARGV + ["--actor.model_name_or_path", str(tmp_path), "--routing_replay", "r2"]
    with pytest.raises(ValueError, match="dense; supported MoE architectures: qwen2_moe"):
        parse(argv)
    _, settings, _ = parse(MINIMAL_UPSTREAM_ARGV + ["--actor.model_name_or_path", tiny_moe_dir,
                                                    "--routing_replay", "r2"])
    assert settings.routing_replay == "r2"


def hub_cache_with(root, repo_id, config):
    """A Hugging Face hub cache (the layout ``huggingface_hub`` writes) holding ``repo_id``'s config.json."""
    folder = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0123abcd")
    (snapshot / "config.json").write_text(json.dumps(config))
    return str(root)


def dry_run_main(argv, capsys):
    from openrlhf_offpolicy.cli.train_ppo_ray import main

    status = main(argv + ["--dry_run"])
    return status, capsys.readouterr().err.strip()


HUB_MOE = {"model_type": "qwen3_moe", "num_experts": 8, "num_hidden_layers": 2, "mlp_only_layers": []}


@pytest.mark.parametrize("config, status, message", [
    ({"model_type": "qwen2", "hidden_size": 8}, 2, "dense; supported MoE architectures"),
    ({"model_type": "deepseek_v3", "n_routed_experts": 8, "num_hidden_layers": 3, "moe_layer_freq": 2}, 2,
     "moe_layer_freq"),
    (HUB_MOE, 0, ""),
])
def test_a_hub_model_in_the_local_cache_is_checked_for_moe_before_ray(capsys, tmp_path, monkeypatch, config, status,
                                                                     message):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", hub_cache_with(tmp_path, "org/tiny", config))
    argv = MINIMAL_UPSTREAM_ARGV + ["--actor.model_name_or_path", "org/tiny", "--routing_replay", "r2"]
    got, err = dry_run_main(argv, capsys)
    assert got == status, err
    if status:
        assert message in err and "\n" not in err
    else:
        assert "note:" not in err


def test_a_hub_model_out_of_reach_gets_one_note_that_the_check_is_at_the_first_forward(capsys, tmp_path,
                                                                                     monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    argv = MINIMAL_UPSTREAM_ARGV + ["--actor.model_name_or_path", "org/not-cached", "--routing_replay", "r3"]
    got, err = dry_run_main(argv, capsys)
    notes = [line for line in err.splitlines() if "note:" in line]
    assert got == 0
    assert len(notes) == 1 and "org/not-cached" in notes[0] and "first forward" in notes[0], err


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_routed_experts_stay_compact_from_vllms_array_to_the_experience(dtype):
    """vLLM's uint8 ids stay uint8; its uint16 ids become int16 (torch has no general uint16), with
    the same values; Ray's read-only arrays are accepted."""
    from openrlhf_offpolicy.integration.runtime.routing import experience_field
    from openrlhf_offpolicy.models.routing_replay import RoutingReplayError

    rng = np.random.default_rng(0)
    routed = rng.integers(0, 255 if dtype == np.uint8 else 1000, (6, 4, 2)).astype(dtype)
    routed.setflags(write=False)
    field = experience_field(routed, truncate_length=5)
    assert field.dtype == (torch.uint8 if dtype == np.uint8 else torch.int16) and field.shape == (1, 4, 2, 5)
    assert field[0].permute(2, 0, 1).long().tolist() == routed[:5].astype(np.int64).tolist()
    with pytest.raises(RoutingReplayError, match="out of range"):
        experience_field(np.full((2, 1, 1), 40000, np.uint16), truncate_length=5)
