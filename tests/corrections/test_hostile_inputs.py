"""Attack suite, configuration: one type check per keyword argument, ASCII-decimal rejection bounds,
short echoes, and parameter bounds that keep every method's loss and metrics finite."""

import math

import pytest
import torch
from hostile import configurations, loss_inputs
from hypothesis import given, settings
from hypothesis import strategies as st

from openrlhf_offpolicy.corrections import method_params, resolve_config
from openrlhf_offpolicy.corrections.rejection import parse_rejection
from openrlhf_offpolicy.models import PolicyLoss

FLOAT_PARAMS = [p for p in method_params().values() if p.type is float and p.nargs is None]
NAME_PARAMS = [p for p in method_params().values() if p.type is str]
LONG = "1" * 10_000


def refused(kwargs, match=None):
    """resolve_config and PolicyLoss refuse ``kwargs`` alike, with a ValueError of at most ~200 characters."""
    with pytest.raises(ValueError, match=match) as library:
        resolve_config(**kwargs)
    with pytest.raises(ValueError) as module:
        PolicyLoss(**kwargs)
    assert str(library.value) == str(module.value)
    assert len(str(library.value)) < 400 and "\n" not in str(library.value), str(library.value)[:500]
    return str(library.value)


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None, torch.tensor(True), [True]],
                         ids=repr)
@pytest.mark.parametrize("name", ["enable_vllm_is_correction", "token_level_loss", "is_batch_normalize"])
def test_a_switch_must_be_a_bool(name, value):
    refused({name: value}, "must be True or False")


@pytest.mark.parametrize("value", [["ppo"], 5, None, b"ppo", torch.tensor(1)], ids=repr)
@pytest.mark.parametrize("name", ["policy_loss_type", "is_correction_level", "is_correction_mode",
                                  "is_correction_gating"] + [p.name for p in NAME_PARAMS])
def test_a_name_must_be_a_string(name, value):
    kwargs = {name: value}
    if name.startswith("is_reshape"):
        kwargs["policy_loss_type"] = "is_reshape"
    refused(kwargs)


def test_the_seed_fork_correction_type_must_be_a_string():
    refused({"enable_vllm_is_correction": True, "vllm_is_correction_type": ["tis"]}, "must be a string")


BAD_NUMBERS = [float("nan"), float("inf"), -float("inf"), 1e-320, 1e-40, 1e39, True, "0.5", LONG,
               torch.tensor(0.5), [0.5], None]


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=lambda v: repr(v)[:20])
@pytest.mark.parametrize("name", [p.name for p in FLOAT_PARAMS if not p.optional] + ["clip_eps_low", "dual_clip"])
def test_a_number_must_be_a_finite_normal_float32(name, value):
    if value is None and name == "dual_clip":
        return  # dual_clip=None is upstream's "off"
    refused({name: value})


@pytest.mark.parametrize("rejection", [5, 0.05, {"seq_max_k2": 0.05}, [5], ["seq_max_k2:0.05", None]], ids=repr)
def test_rejection_must_be_criterion_strings(rejection):
    refused({"enable_vllm_is_correction": True, "rejection": rejection}, "rejection")


@pytest.mark.parametrize("criterion", [
    "seq_max_k2:1e-320", "seq_max_k2:1e-40", "seq_max_k2:1e39", "seq_max_k2:١٢", "seq_max_k2:1_000",
    "seq_max_k2:0x10", "seq_max_k2:inf", "seq_max_k2:nan", "seq_max_k2:０.５", "token_k1:-1:1e-39",
    f"seq_max_k2:{LONG}"])
def test_rejection_bounds_are_ascii_decimals_representable_in_float32(criterion):
    message = refused({"enable_vllm_is_correction": True, "rejection": [criterion]}, "rejection criterion")
    assert len(message) < 300


@pytest.mark.parametrize("pair", [("seq_max_k2:0.05", "seq_max_k2:0.050"), ("veto:0.1", " veto:1e-1"),
                                  ("token_k1:0.5", "token_k1:-0.5:0.5")])
def test_the_same_criterion_twice_is_refused_however_it_is_written(pair):
    refused({"enable_vllm_is_correction": True, "rejection": list(pair)}, "given twice")


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40))
def test_any_text_as_a_rejection_criterion_is_a_criterion_or_a_value_error(text):
    try:
        (criterion,) = parse_rejection([text])
    except ValueError as e:
        assert len(str(e)) < 400 and "\n" not in str(e)
        return
    for bound in (criterion.low, criterion.high):
        assert math.isinf(bound) or bound == 0 or 1.1754943508222875e-38 <= abs(bound) <= 3.4028234663852886e38
    assert text.strip().split(":", 1)[1].isascii()


def test_a_10k_digit_input_is_echoed_in_about_80_characters():
    message = refused({"policy_loss_type": "sapo", "sapo_tau_pos": LONG})
    assert len(message) < 200 and "(10002 characters)" in message


def test_is_reshape_gaussian_width_that_underflows_float32_is_refused():
    refused({"policy_loss_type": "is_reshape", "is_reshape_kernel": "gaussian", "is_reshape_width": 1e-30},
            "is_reshape_width")


FINITE_SCALES = st.sampled_from([1e-38, 1.2e-38, 1e-30, 1e-19, 1e-10, 1e-6, 1e-3, 0.5, 1.0, 2.0, 1e3, 1e6, 1e10,
                                 1e19, 1e30, 3e38, -1.0])
CONFIGS_WITH_FLOAT_PARAMS = [
    (c, p.name) for c in configurations()[::3] for p in FLOAT_PARAMS
    if p.name in {q.name for e in (resolve_config(**c).loss_entry, resolve_config(**c).correction_entry)
                  for q in e.params}
]


@settings(max_examples=250, deadline=None)
@given(st.sampled_from(CONFIGS_WITH_FLOAT_PARAMS), FINITE_SCALES, st.sampled_from([1.0, 30.0]))
def test_every_accepted_method_parameter_gives_a_finite_loss_gradient_and_metrics(case, value, scale):
    """Over every registered method: a parameter value is refused, or the loss, its gradient and every
    metric stay finite (a 1e-30 gaussian width or a 1e-38 SAPO temperature used to give NaN)."""
    kwargs, name = case
    try:
        loss = PolicyLoss(**kwargs, **{name: value})
    except ValueError:
        return
    inputs = loss_inputs(kwargs, seed=1)
    inputs["log_probs"] = (inputs["log_probs"].detach() * scale).requires_grad_()
    out = loss(**inputs)
    out[0].backward()
    assert torch.isfinite(out[0]) and torch.isfinite(inputs["log_probs"].grad).all()
    assert all(torch.isfinite(v).all() for v in loss.metrics.values()), {k: v for k, v in loss.metrics.items()}
