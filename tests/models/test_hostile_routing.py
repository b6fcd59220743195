"""Attack suite, routing replay: malformed replayed ids (repeated, float, NaN, bool, out of range) are a
one-line RoutingReplayError naming the position and layer, never replayed as given."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from openrlhf_offpolicy.models.routing_replay import RoutingReplay, RoutingReplayError, check_expert_ids


def tiny(arch):
    import transformers as tf

    common = dict(vocab_size=48, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=64)
    if arch == "qwen3_moe":
        config = tf.Qwen3MoeConfig(**common, intermediate_size=48, moe_intermediate_size=16, num_experts=8,
                                   num_experts_per_tok=2, norm_topk_prob=True, head_dim=8)
        cls = tf.Qwen3MoeForCausalLM
    else:
        config = tf.MixtralConfig(**common, intermediate_size=16, num_local_experts=6, num_experts_per_tok=2)
        cls = tf.MixtralForCausalLM
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return cls(config).eval()


def recorded(model, n=8):
    ids = torch.randint(0, 48, (1, n), generator=torch.Generator().manual_seed(0))
    replay = RoutingReplay.attach(model)
    with torch.no_grad(), replay.record():
        model(ids)
    return replay, ids, replay.recorded().long()


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral"])
def test_a_token_naming_one_expert_twice_is_refused_naming_position_and_layer(arch):
    """It used to be replayed as given, changing log-probs by up to 2.8e-3."""
    model = tiny(arch)
    replay, ids, rows = recorded(model)
    rows[3, 1, 1] = rows[3, 1, 0]
    with pytest.raises(RoutingReplayError, match="position 3, MoE layer 1 names expert .* twice") as e:
        with torch.no_grad(), replay.replay(rows):
            model(ids)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral"])
def test_a_repeat_at_a_position_that_is_not_replayed_is_ignored(arch):
    model = tiny(arch)
    replay, ids, rows = recorded(model)
    rows[-1] = 0  # the last token's row is 0 and never replayed
    mask = torch.ones(rows.shape[0], dtype=torch.bool)
    mask[-1] = False
    with torch.no_grad(), replay.replay(rows, mask):
        model(ids)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
def test_float_nan_and_bool_ids_are_refused_never_truncated(dtype):
    model = tiny("qwen3_moe")
    replay, ids, rows = recorded(model)
    bad = rows.to(dtype)
    if dtype.is_floating_point:
        bad[0, 0, 0] = float("nan")  # [[5, 3], [nan, 2.9]] used to become [[5, 3], [0, 2]]
        bad[0, 0, 1] = 2.9
    with pytest.raises(RoutingReplayError, match="must be integers"):
        with replay.replay(bad):
            pass


def test_an_out_of_range_id_names_the_position_layer_and_id_through_the_locator():
    ids = torch.tensor([[[0, 1]], [[2, 9]]])
    with pytest.raises(RoutingReplayError, match=r"sample 0, token 1, MoE layer 0 names expert 9"):
        check_expert_ids(ids, 8, locate=lambda n: f"sample 0, token {n}")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.lists(st.integers(-3, 10), min_size=2, max_size=2), min_size=2, max_size=2),
                min_size=1, max_size=4))
def test_check_expert_ids_accepts_exactly_distinct_in_range_integer_rows(rows):
    ids = torch.tensor(rows)
    ok = all(0 <= e < 8 for t in rows for layer in t for e in layer) and all(
        len(set(layer)) == len(layer) for t in rows for layer in t)
    if ok:
        check_expert_ids(ids, 8)
    else:
        with pytest.raises(RoutingReplayError):
            check_expert_ids(ids, 8)
