"""``is_batch_normalize``: the correction's weights rescaled to mean 1 over the call's kept units."""

import math

import pytest
from helpers import random_inputs

from openrlhf_offpolicy.corrections import resolve_config
from openrlhf_offpolicy.models import PolicyLoss


def ppo_terms(inputs):
    """Per-token PPO-clip loss (eps 0.2) as nested lists, float64 loops."""
    ratio = (inputs["log_probs"] - inputs["old_log_probs"]).exp().tolist()
    adv = inputs["advantages"].tolist()
    return [[-min(r * a, min(max(r, 0.8), 1.2) * a) for r, a in zip(rr, aa)] for rr, aa in zip(ratio, adv)]


def loss_of(inputs, forward_kwargs=None, **kw):
    inputs = {k: (v.detach().clone().requires_grad_() if k == "log_probs" else v) for k, v in inputs.items()}
    return PolicyLoss(enable_vllm_is_correction=True, **kw)(**inputs, **(forward_kwargs or {}))[0].item()


@pytest.mark.parametrize("normalisers", [False, True])
def test_token_weights_are_divided_by_their_mean_over_the_kept_tokens(normalisers):
    inputs = random_inputs(batch=6, length=10, seed=21, mismatch_scale=(0.05, 0.6))
    extra = dict(batch_num_tokens=float(inputs["action_mask"].sum() * 2), dp_size=2) if normalisers else {}
    low, high = 0.8, 1.25
    log_rho = (inputs["old_log_probs"] - inputs["rollout_log_probs"]).tolist()
    mask, terms = inputs["action_mask"].tolist(), ppo_terms(inputs)
    kept = [(b, t) for b in range(6) for t in range(10) if mask[b][t] > 0 and low <= math.exp(log_rho[b][t]) <= high]
    n = sum(1 for row in mask for m in row if m > 0)
    assert 0 < len(kept) < n
    mean_w = sum(math.exp(log_rho[b][t]) for b, t in kept) / len(kept)
    assert abs(mean_w - 1) > 1e-3, "the weights must not already have mean 1"
    numerator = sum(terms[b][t] * math.exp(log_rho[b][t]) / mean_w for b, t in kept)
    denominator = n if not normalisers else extra["batch_num_tokens"] / extra["dp_size"]
    got = loss_of(inputs, extra, vllm_is_correction_type="icepop", vllm_is_truncated_threshold=(low, high),
                  is_batch_normalize=True)
    assert got == pytest.approx(numerator / denominator, rel=1e-10)


def test_sequence_weights_are_divided_by_their_mean_over_the_sequences():
    inputs = random_inputs(batch=6, length=10, seed=22, mismatch_scale=(0.05, 0.3))
    low, high = 0.5, 5.0
    log_rho = (inputs["old_log_probs"] - inputs["rollout_log_probs"]).tolist()
    mask, terms = inputs["action_mask"].tolist(), ppo_terms(inputs)
    seq_w = [min(max(math.exp(sum(x for x, m in zip(lr, mm) if m > 0)), low), high) for lr, mm in zip(log_rho, mask)]
    mean_w = sum(seq_w) / len(seq_w)
    n = sum(1 for row in mask for m in row if m > 0)
    expected = sum(terms[b][t] * seq_w[b] / mean_w for b in range(6) for t in range(10) if mask[b][t] > 0) / n
    got = loss_of(inputs, vllm_is_correction_type="seq-tis", vllm_is_truncated_threshold=(low, high),
                  is_batch_normalize=True)
    assert got == pytest.approx(expected, rel=1e-10)
    assert got != pytest.approx(loss_of(inputs, vllm_is_correction_type="seq-tis",
                                        vllm_is_truncated_threshold=(low, high)), rel=1e-6)


def test_rejected_tokens_are_left_out_of_the_mean():
    inputs = random_inputs(batch=6, length=10, seed=23, mismatch_scale=(0.05, 0.6))
    with_rejection = PolicyLoss(enable_vllm_is_correction=True, vllm_is_correction_type="tis",
                                is_batch_normalize=True, rejection=["token_k1:0.2"])
    with_rejection(**inputs)
    config = resolve_config(enable_vllm_is_correction=True, vllm_is_correction_type="tis")
    assert config.is_batch_normalize is False
    log_rho = (inputs["old_log_probs"] - inputs["rollout_log_probs"])
    keep = (log_rho.abs() <= 0.2) & (inputs["action_mask"] > 0)
    # is/weight_mean is sum(c) over all action tokens: mean 1 over the kept ones means sum(c) = #kept.
    n = inputs["action_mask"].sum()
    expected = (keep.sum() / n).item()
    assert with_rejection.metrics["is/weight_mean"].item() == pytest.approx(expected, rel=1e-6)  # float32 metric


def test_batch_normalize_without_a_correction_or_with_a_non_bool_is_refused():
    with pytest.raises(ValueError, match="no correction is selected"):
        resolve_config(is_batch_normalize=True)
    with pytest.raises(ValueError, match="True or False"):
        resolve_config(enable_vllm_is_correction=True, is_batch_normalize="false")
