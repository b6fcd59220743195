"""Attack suite, PolicyLoss: every accepted configuration pickles, refuses a bad action mask, and
keeps a masked token that overflows out of the loss (issue: hostile and malformed input)."""

import pickle

import pytest
import torch
from hostile import configurations, loss_inputs
from hypothesis import given, settings
from hypothesis import strategies as st

from openrlhf_offpolicy.models import PolicyLoss

CONFIGS = configurations()


def test_the_suite_covers_every_loss_and_correction_in_hundreds_of_configurations():
    assert len(CONFIGS) >= 500
    from openrlhf_offpolicy.corrections import CORRECTIONS, POLICY_LOSSES, resolve_config

    seen = {(resolve_config(**c).policy_loss_type, resolve_config(**c).correction) for c in CONFIGS}
    assert {loss for loss, _ in seen} == set(POLICY_LOSSES.names())
    assert {corr for _, corr in seen} >= set(CORRECTIONS.names(hidden=False)) - {"none"}


def test_every_configuration_pickles_before_and_after_forward_and_keeps_its_metrics():
    for i, kwargs in enumerate(CONFIGS):
        loss = PolicyLoss(**kwargs)
        pickle.loads(pickle.dumps(loss))
        loss(**loss_inputs(kwargs))
        restored = pickle.loads(pickle.dumps(loss))  # before ``metrics`` is read: the lazy metrics travel
        if i % 7:
            continue  # every configuration pickles; one in seven also compares every metric (time)
        expected = loss.metrics
        assert restored.metrics.keys() == expected.keys(), kwargs
        for name, value in expected.items():
            assert torch.equal(restored.metrics[name], value), (kwargs, name)


@pytest.mark.parametrize("gating", ["tv", "binary_kl"])
@pytest.mark.parametrize("level", ["token", "seq"])
def test_upstream_only_divergence_gates_pickle_like_upstreams_policy_loss(level, gating):
    loss = PolicyLoss(is_correction_level=level, is_correction_gating=gating, is_correction_threshold=[0.0, 0.01])
    assert pickle.loads(pickle.dumps(loss)).config == loss.config


@pytest.mark.parametrize("bad", [float("nan"), 0.5, -1.0])
def test_an_action_mask_that_is_not_0_1_is_a_value_error_in_every_configuration(bad):
    for kwargs in CONFIGS:
        inputs = loss_inputs(kwargs)
        inputs["action_mask"] = inputs["action_mask"].clone()
        inputs["action_mask"][0, 0] = bad
        with pytest.raises(ValueError, match="action_mask must hold only 0 and 1"):
            PolicyLoss(**kwargs)(**inputs)


@settings(max_examples=40, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True, width=32).filter(lambda v: v not in (0.0, 1.0)),
       st.integers(0, len(CONFIGS) - 1))
def test_any_mask_value_other_than_0_or_1_is_refused_before_computing(value, index):
    kwargs = CONFIGS[index]
    inputs = loss_inputs(kwargs)
    inputs["action_mask"] = inputs["action_mask"].clone()
    inputs["action_mask"][-1, -1] = value
    with pytest.raises(ValueError, match="action_mask"):
        PolicyLoss(**kwargs)(**inputs)


def test_a_boolean_action_mask_gives_the_float_masks_loss():
    kwargs = CONFIGS[0]
    inputs = loss_inputs(kwargs)
    as_bool = dict(inputs, action_mask=inputs["action_mask"].bool())
    assert torch.equal(PolicyLoss(**kwargs)(**inputs)[0], PolicyLoss(**kwargs)(**as_bool)[0])


@pytest.mark.parametrize("advantage", [7e29, -3e38])
def test_a_masked_token_whose_loss_overflows_contributes_nothing_in_every_configuration(advantage):
    """r A overflows float32 at |A| ~ 7e29; the masked token used to turn the loss into 0 x inf = NaN."""
    for kwargs in CONFIGS:
        inputs = loss_inputs(kwargs, dtype=torch.float32)
        mask = inputs["action_mask"].clone()
        mask[0, -1] = 0.0  # the token is masked out ...
        huge = inputs["advantages"].clone()
        huge[0, -1] = advantage  # ... and its loss overflows
        clean = inputs["advantages"].clone()
        clean[0, -1] = 0.0
        lp_a = inputs["log_probs"].detach().clone().requires_grad_()
        lp_b = inputs["log_probs"].detach().clone().requires_grad_()
        a = PolicyLoss(**kwargs)(**dict(inputs, log_probs=lp_a, advantages=huge, action_mask=mask))[0]
        b = PolicyLoss(**kwargs)(**dict(inputs, log_probs=lp_b, advantages=clean, action_mask=mask))[0]
        a.backward()
        b.backward()
        assert torch.isfinite(a) and torch.isfinite(lp_a.grad).all(), kwargs
        if kwargs.get("is_batch_normalize") or kwargs["policy_loss_type"] in ("kl_cov", "clip_cov"):
            continue  # batch statistics read the (masked) advantage's sign: finiteness is the property
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), kwargs
