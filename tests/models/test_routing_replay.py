"""Routing replay on tiny random MoE models of every supported architecture (built from configs)."""

import pytest
import torch

from openrlhf_offpolicy.models.routing_replay import (
    GATE_RULES,
    RoutingReplay,
    RoutingReplayError,
    bytes_per_token,
    check_config,
    find_routers,
    from_router_order,
    influential_positions,
    moe_layer_indices,
    storage_dtype,
    to_router_order,
)

VOCAB, HIDDEN = 48, 32


def tiny_moe(arch: str, seed: int = 0, num_hidden_layers: int = 2, **layout):
    """``layout``: the config's dense-layer keys (``mlp_only_layers``, ``first_k_dense_replace``)."""
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=num_hidden_layers, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, **layout)
    if arch == "qwen2_moe":
        config = tf.Qwen2MoeConfig(**common, intermediate_size=48, moe_intermediate_size=16,
                                   shared_expert_intermediate_size=16, num_experts=8, num_experts_per_tok=2,
                                   norm_topk_prob=False)
        cls = tf.Qwen2MoeForCausalLM
    elif arch == "qwen3_moe":
        config = tf.Qwen3MoeConfig(**common, intermediate_size=48, moe_intermediate_size=16, num_experts=8,
                                   num_experts_per_tok=3, norm_topk_prob=True, head_dim=8)
        cls = tf.Qwen3MoeForCausalLM
    elif arch == "mixtral":
        config = tf.MixtralConfig(**common, intermediate_size=16, num_local_experts=6, num_experts_per_tok=2)
        cls = tf.MixtralForCausalLM
    elif arch == "deepseek_v3":
        common["num_key_value_heads"] = common["num_attention_heads"]  # MLA: one key/value per head
        common.setdefault("first_k_dense_replace", 0)
        config = tf.DeepseekV3Config(**common, intermediate_size=48, moe_intermediate_size=16, n_routed_experts=8,
                                     num_experts_per_tok=2, n_group=2, topk_group=1,
                                     kv_lora_rank=8, q_lora_rank=None, qk_rope_head_dim=4, qk_nope_head_dim=4,
                                     v_head_dim=8, n_shared_experts=1, routed_scaling_factor=1.5)
        cls = tf.DeepseekV3ForCausalLM
    else:
        raise ValueError(arch)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for router in find_routers(model):
            router.weight.normal_(0.0, 0.5)
            if hasattr(router, "e_score_correction_bias"):
                router.e_score_correction_bias.normal_(0.0, 0.1)
    return model


ARCHS = ["qwen2_moe", "qwen3_moe", "mixtral", "deepseek_v3"]


def batch(seed=0, B=3, T=10):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, -3:] = 0  # right padding
    mask[2, -1:] = 0
    return ids, mask


def token_log_probs(model, ids, mask):
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(ids, attention_mask=mask, position_ids=position_ids).logits.float()
    return torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def perturb_routers(model, scale=0.5, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for router in find_routers(model):
            router.weight.add_(scale * torch.randn(router.weight.shape, generator=g))


def experts_seen(model):
    """Pre-hooks on every experts module: the top_k_index each one is called with."""
    seen = []
    handles = [m.register_forward_pre_hook(lambda mod, args: seen.append(args[1].clone()))
               for m in model.modules() if type(m).__name__.endswith("Experts")]
    return seen, handles


@pytest.mark.parametrize("arch", ARCHS)
def test_replayed_forward_selects_exactly_the_recorded_experts(arch):
    model = tiny_moe(arch)
    ids, mask = batch()
    replay = RoutingReplay.attach(model)
    with torch.no_grad(), replay.record():
        token_log_probs(model, ids, mask)
    recorded = replay.recorded()
    assert recorded.shape == (ids.numel(), replay.num_layers, replay.top_k) and recorded.dtype == torch.uint8
    perturb_routers(model)
    seen, handles = experts_seen(model)
    try:
        with torch.no_grad(), replay.replay(recorded):
            token_log_probs(model, ids, mask)
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == replay.num_layers
    for layer, used in enumerate(seen):
        assert torch.equal(used.sort(-1).values, recorded[:, layer].long().sort(-1).values)


@pytest.mark.parametrize("arch", ARCHS)
def test_replaying_the_models_own_routing_reproduces_its_gate_weights_and_log_probs(arch):
    """The gate-weight rule mirrors the model's: with its own top-k, replay changes nothing."""
    model = tiny_moe(arch)
    ids, mask = batch(seed=3)
    replay = RoutingReplay.attach(model)
    with torch.no_grad(), replay.record():
        plain = token_log_probs(model, ids, mask)
    with torch.no_grad(), replay.replay(replay.recorded()):
        replayed = token_log_probs(model, ids, mask)
    assert torch.allclose(replayed, plain, atol=1e-6, rtol=0)
    assert replay.counts().flipped_pairs == 0 and replay.counts().replayed_pairs == ids.numel() * replay.num_layers


@pytest.mark.parametrize("arch", ARCHS)
def test_under_a_perturbed_router_replay_restores_the_recording_forwards_log_probs(arch):
    """The router's top-k choice is perturbed (noise on the logits it selects with, as a rollout
    engine's numerics would): without replay experts flip and log-probs move; with the recorded
    routing replayed, the log-probs equal the recording forward's to float tolerance."""
    model = tiny_moe(arch)
    ids, mask = batch(seed=5)
    valid = mask[:, 1:].bool()
    replay = RoutingReplay.attach(model)
    with torch.no_grad(), replay.record():
        recorded_lp = token_log_probs(model, ids, mask)
    recorded = replay.recorded()
    g = torch.Generator().manual_seed(7)
    noise = {id(r): torch.randn(ids.numel(), replay.num_experts, generator=g) * 3.0 for r in replay.routers}

    def noisy_selection(router, inputs, output):
        logits, weights, own = output
        noisy = logits.float() + noise[id(router)]
        choice = noisy.topk(router.top_k, dim=-1).indices
        return logits, GATE_RULES[type(router).__name__](router, logits, choice), choice

    handles = [r.register_forward_hook(noisy_selection, prepend=True) for r in replay.routers]
    try:
        with torch.no_grad():
            flipped_lp = token_log_probs(model, ids, mask)
        with torch.no_grad(), replay.replay(recorded):
            replayed_lp = token_log_probs(model, ids, mask)
    finally:
        for h in handles:
            h.remove()
    assert torch.allclose(replayed_lp[valid], recorded_lp[valid], atol=1e-6, rtol=0)
    assert (flipped_lp[valid] - recorded_lp[valid]).abs().max() > 1e-3
    assert replay.counts().flip_rate() > 0.3


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_reach_the_router_weights_under_replay(arch):
    model = tiny_moe(arch).train()
    ids, mask = batch(seed=4)
    replay = RoutingReplay.attach(model)
    with torch.no_grad(), replay.record():
        token_log_probs(model, ids, mask)
    recorded = replay.recorded()
    perturb_routers(model)
    with replay.replay(recorded):
        loss = -(token_log_probs(model, ids, mask) * mask[:, 1:]).sum()
        loss.backward()
    for router in replay.routers:
        assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0


def test_router_gradient_under_replay_matches_a_float64_reference_for_one_qwen_layer():
    """d/dW of sum_e c_e * w_e(W) with w = softmax(W h)[E] renormalised, by autograd in float64."""
    model = tiny_moe("qwen3_moe").double()
    router = find_routers(model)[0]
    replay = RoutingReplay(model)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(5, HIDDEN, generator=g, dtype=torch.float64)
    ids = torch.stack([torch.stack([torch.randperm(replay.num_experts, generator=g)[:replay.top_k]
                                    for _ in range(replay.num_layers)]) for _ in range(5)])  # distinct per token
    c = torch.randn(5, replay.top_k, generator=g, dtype=torch.float64)
    with replay.replay(ids):
        _, weights, used = router(h)
    (weights * c).sum().backward()
    W = router.weight.detach().clone().requires_grad_(True)
    probs = torch.exp(h @ W.T - torch.logsumexp(h @ W.T, dim=-1, keepdim=True))
    chosen = torch.stack([probs[i, ids[i, 0]] for i in range(5)])
    ref = chosen / chosen.sum(-1, keepdim=True)
    (ref * c).sum().backward()
    assert torch.equal(used, ids[:, 0])
    assert torch.allclose(router.weight.grad, W.grad, atol=1e-6, rtol=1e-5)  # the router's softmax runs in float32


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_recorded_in_a_padded_batch_replayed_per_sequence_and_packed_order(arch):
    """[B, L, k, T] <-> router order, padded and packed: the same routing at every valid position."""
    model = tiny_moe(arch)
    ids, mask = batch(seed=6)
    replay = RoutingReplay.attach(model)
    with torch.no_grad(), replay.record():
        token_log_probs(model, ids, mask)
    per_sequence = from_router_order(replay.recorded(), mask, packed=False)
    assert per_sequence.shape == (3, replay.num_layers, replay.top_k, ids.shape[1])
    # each sequence alone (no padding): its routing equals the batch's at its valid positions
    for b in range(3):
        n = int(mask[b].sum())
        with torch.no_grad(), replay.record():
            token_log_probs(model, ids[b:b + 1, :n], mask[b:b + 1, :n])
        alone = from_router_order(replay.recorded(), mask[b:b + 1, :n], packed=False)[0]
        assert torch.equal(alone.sort(1).values, per_sequence[b, :, :, :n].sort(1).values)
    packed_rows = to_router_order(per_sequence, mask, packed=True)
    assert packed_rows.shape[0] == int(mask.sum())
    assert torch.equal(from_router_order(packed_rows, mask, packed=True) * mask[:, None, None].to(torch.uint8),
                       per_sequence * mask[:, None, None].to(torch.uint8))


def test_a_packed_forward_replays_rows_in_its_own_token_order():
    """A packed forward (one row of concatenated sequences) routes the packed rows it is given."""
    model = tiny_moe("mixtral")
    ids, mask = batch(seed=8)
    replay = RoutingReplay.attach(model)
    with torch.no_grad(), replay.record():
        token_log_probs(model, ids, mask)
    per_sequence = from_router_order(replay.recorded(), mask, packed=False)
    rows = to_router_order(per_sequence, mask, packed=True)
    flat = ids[mask.bool()].unsqueeze(0)
    perturb_routers(model)
    seen, handles = experts_seen(model)
    try:
        with torch.no_grad(), replay.replay(rows):
            model(flat, attention_mask=torch.ones_like(flat))
    finally:
        for h in handles:
            h.remove()
    for layer, used in enumerate(seen):
        assert torch.equal(used.sort(-1).values, rows[:, layer].long().sort(-1).values)


def test_replay_mask_keeps_own_routing_elsewhere_and_counts_only_masked_pairs():
    model = tiny_moe("qwen2_moe")
    ids, mask = batch(seed=9)
    replay = RoutingReplay.attach(model)
    with torch.no_grad(), replay.record():
        token_log_probs(model, ids, mask)
    own = replay.recorded()
    forced = (own.long() + 1) % replay.num_experts  # every set differs
    where = influential_positions(mask).flatten()
    seen, handles = experts_seen(model)
    try:
        with torch.no_grad(), replay.replay(forced, where):
            token_log_probs(model, ids, mask)
    finally:
        for h in handles:
            h.remove()
    counts = replay.counts()
    assert counts.replayed_pairs == counts.flipped_pairs == int(where.sum()) * replay.num_layers
    for layer, used in enumerate(seen):
        assert torch.equal(used[where], forced[where, layer])
        assert torch.equal(used[~where], own[~where, layer].long())


def test_influential_positions_drop_each_sequences_last_valid_token():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    assert influential_positions(mask).int().tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]


def test_storage_is_uint8_up_to_256_experts_then_int16_and_qwen3_30b_a3b_needs_384_bytes_per_token():
    assert storage_dtype(256) == torch.uint8 and storage_dtype(257) == torch.int16
    assert bytes_per_token(num_layers=48, top_k=8, num_experts=128) == 384


def test_unsupported_and_dense_models_are_rejected_with_one_line_naming_the_supported_ones():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dense = Qwen2ForCausalLM(Qwen2Config(vocab_size=16, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(RoutingReplayError, match="qwen2_moe, qwen3_moe, mixtral, deepseek_v3") as e:
        RoutingReplay(dense)
    assert "\n" not in str(e.value)
    with pytest.raises(RoutingReplayError, match="dense"):
        check_config({"model_type": "qwen2"})
    with pytest.raises(RoutingReplayError, match="does not support model_type 'dbrx'"):
        check_config({"model_type": "dbrx", "num_experts": 16})
    check_config({"model_type": "qwen3_moe", "num_experts": 128})


def test_replayed_ids_of_the_wrong_shape_or_range_are_refused():
    model = tiny_moe("qwen3_moe")
    replay = RoutingReplay.attach(model)
    ids, mask = batch()
    with pytest.raises(RoutingReplayError, match="shape"):
        with replay.replay(torch.zeros(ids.numel(), replay.num_layers + 1, replay.top_k, dtype=torch.long)):
            pass
    bad = torch.full((ids.numel(), replay.num_layers, replay.top_k), replay.num_experts)
    with pytest.raises(RoutingReplayError, match="must lie in"), torch.no_grad(), replay.replay(bad):
        token_log_probs(model, ids, mask)


# --------------------------------------------------------------------------- vLLM's per-decoder-layer rows
# (architecture, config layout, decoder-layer index of each MoE router)
DECODER_LAYOUTS = {
    "qwen3_moe mlp_only_layers=[0]": ("qwen3_moe", dict(num_hidden_layers=3, mlp_only_layers=[0]), [1, 2]),
    "qwen3_moe decoder_sparse_step=2": ("qwen3_moe", dict(num_hidden_layers=4, decoder_sparse_step=2), [1, 3]),
    "deepseek_v3 first_k_dense_replace=1": ("deepseek_v3", dict(num_hidden_layers=3, first_k_dense_replace=1), [1, 2]),
    "qwen3_moe all MoE": ("qwen3_moe", dict(num_hidden_layers=3), [0, 1, 2]),
    "mixtral": ("mixtral", dict(num_hidden_layers=2), [0, 1]),
}


@pytest.mark.parametrize("name", DECODER_LAYOUTS)
def test_each_router_knows_its_decoder_layer_and_the_config_rule_agrees(name):
    arch, layout, expected = DECODER_LAYOUTS[name]
    model = tiny_moe(arch, **layout)
    controller = RoutingReplay(model)
    assert list(controller.decoder_layers) == expected
    assert controller.num_decoder_layers == layout["num_hidden_layers"]
    assert moe_layer_indices(model.config) == expected
    assert moe_layer_indices(model.config.to_dict()) == expected


class EngineWrapper(torch.nn.Module):
    """Like DeepSpeed's engine: the model as ``.module``, and a ``config`` that is not the model's."""

    def __init__(self, module):
        super().__init__()
        self.module, self.config = module, {"train_batch_size": 8}


def test_routing_replay_finds_the_model_inside_an_engine_wrapper_whose_config_is_not_the_models():
    model = tiny_moe("qwen3_moe", num_hidden_layers=2)
    controller = RoutingReplay.attach(EngineWrapper(model))
    assert list(controller.decoder_layers) == [0, 1] and controller.num_decoder_layers == 2


def vllm_routed_experts(model, tokens: int, seed: int = 0) -> torch.Tensor:
    """``[tokens, num_hidden_layers, k]`` like vLLM 0.29's ``routed_experts``: one row per decoder layer,
    the MoE layers' rows at their decoder-layer index; a dense layer's row is never written by vLLM
    (here: out-of-range garbage, so reading it would fail loudly)."""
    controller = RoutingReplay(model)
    g = torch.Generator().manual_seed(seed)
    out = torch.full((tokens, controller.num_decoder_layers, controller.top_k), 255, dtype=torch.long)
    for layer in controller.decoder_layers:
        out[:, layer] = torch.stack([torch.randperm(controller.num_experts, generator=g)[:controller.top_k]
                                     for _ in range(tokens)])
    controller.remove()
    return out


@pytest.mark.parametrize("name", DECODER_LAYOUTS)
def test_vllm_rows_are_replayed_by_decoder_layer_and_dense_layer_rows_ignored(name):
    arch, layout, expected = DECODER_LAYOUTS[name]
    model = tiny_moe(arch, **layout)
    ids, mask = batch(seed=4)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    routed = vllm_routed_experts(model, ids.numel())
    controller = RoutingReplay.attach(model)
    seen, handles = experts_seen(model)
    with torch.no_grad(), controller.replay(routed):
        by_decoder_layer = model(ids, attention_mask=mask, position_ids=position_ids).logits
    for h in handles:
        h.remove()
    assert len(seen) == len(expected)
    for used, layer in zip(seen, expected):
        assert torch.equal(used, routed[:, layer])
    with torch.no_grad(), controller.replay(routed[:, expected]):  # one row per router: the same forward
        by_router = model(ids, attention_mask=mask, position_ids=position_ids).logits
    assert torch.equal(by_decoder_layer, by_router)


def test_routing_rows_matching_neither_the_routers_nor_the_decoder_layers_are_refused():
    model = tiny_moe("qwen3_moe", num_hidden_layers=3, mlp_only_layers=[0])
    controller = RoutingReplay(model)
    with pytest.raises(RoutingReplayError, match=r"\[tokens, 2, 3\] \(one row per MoE layer\) or \[tokens, 3, 3\]"):
        with controller.replay(torch.zeros(5, 4, 3, dtype=torch.long)):
            pass


def test_out_of_range_ids_are_refused_when_the_replay_starts_before_any_layer_runs():
    """One check per micro-batch: the error comes at ``replay``'s entry, no MoE layer has routed."""
    model = tiny_moe("qwen3_moe")
    replay = RoutingReplay.attach(model)
    ids, mask = batch()
    seen, handles = experts_seen(model)
    bad = torch.zeros(ids.numel(), replay.num_layers, replay.top_k, dtype=torch.uint8)
    bad[-1, -1, -1] = replay.num_experts
    try:
        with pytest.raises(RoutingReplayError, match="must lie in"), torch.no_grad(), replay.replay(bad):
            token_log_probs(model, ids, mask)
    finally:
        for h in handles:
            h.remove()
    assert seen == []
    with pytest.raises(RoutingReplayError, match="integers"), replay.replay(bad.float()):
        pass


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_compact_replayed_ids_route_and_count_exactly_like_int64_ids(dtype):
    model = tiny_moe("qwen3_moe")
    ids, mask = batch(seed=5)
    replay = RoutingReplay.attach(model)
    with torch.no_grad(), replay.record():
        token_log_probs(model, ids, mask)
    forced = (replay.recorded().long() + torch.randint(0, 2, (1,), generator=torch.Generator().manual_seed(0))) \
        % replay.num_experts
    where = influential_positions(mask).flatten()
    results = []
    for rows in (forced, forced.to(dtype)):
        with torch.no_grad(), replay.replay(rows, where):
            results.append((token_log_probs(model, ids, mask), replay.counts()))
    assert torch.equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]


def test_a_replay_without_flip_counting_routes_identically_and_counts_nothing():
    model = tiny_moe("qwen3_moe")
    ids, mask = batch(seed=7)
    replay = RoutingReplay.attach(model)
    with torch.no_grad(), replay.record():
        token_log_probs(model, ids, mask)
    forced = (replay.recorded().long() + 1) % replay.num_experts
    out = []
    for count in (True, False):
        with torch.no_grad(), replay.replay(forced, count_flips=count):
            out.append(token_log_probs(model, ids, mask))
        counts = replay.counts()
    assert torch.equal(out[0], out[1]) and counts.replayed_pairs == counts.flipped_pairs == 0
