"""Composable rejection: parsing, each criterion against a loop reference, the old gates as special
cases, AND-combination with the correction, the unchanged denominator and the metrics."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
from helpers import correction_output, random_inputs

from openrlhf_offpolicy.corrections import CORRECTIONS, resolve_config
from openrlhf_offpolicy.corrections.batch import make_policy_batch
from openrlhf_offpolicy.corrections.rejection import apply_rejection, parse_criterion, parse_rejection
from openrlhf_offpolicy.models import PolicyLoss


def build_batch(inputs):
    batch, _, _ = make_policy_batch(inputs["log_probs"], inputs["old_log_probs"], inputs["advantages"],
                                    inputs["action_mask"], inputs["rollout_log_probs"])
    return batch


def rejected_by(criteria, inputs):
    """Tokens the criteria reject on top of no correction, ``[B, T]`` bool."""
    batch = build_batch(inputs)
    base = CORRECTIONS.get("none").fn(batch, None)
    return apply_rejection(base, batch, parse_rejection(criteria)).rejected


# ----------------------------------------------------------------------------- loop reference
def binkl(p, q):
    eps = 1e-6
    p, q = min(max(p, eps), 1 - eps), min(max(q, eps), 1 - eps)
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def reference_keep(criterion, inputs):
    """Keep-mask [B][T] of one criterion, token by token in float64 with ``math``."""
    rule, *vals = criterion.split(":")
    vals = [float(v) for v in vals]
    old, roll = inputs["old_log_probs"].tolist(), inputs["rollout_log_probs"].tolist()
    cur, adv, mask = inputs["log_probs"].tolist(), inputs["advantages"].tolist(), inputs["action_mask"].tolist()
    out = []
    for b in range(len(old)):
        toks = [t for t in range(len(old[b])) if mask[b][t] > 0]
        lr = {t: max(-20.0, min(20.0, old[b][t] - roll[b][t])) for t in toks}
        stat = {"k1": lr, "k2": {t: 0.5 * v * v for t, v in lr.items()},
                "k3": {t: math.exp(v) - 1 - v for t, v in lr.items()}}
        if rule == "token_kpop":
            keep = {t: max(binkl(math.exp(roll[b][t]), math.exp(old[b][t])),
                           binkl(math.exp(old[b][t]), math.exp(roll[b][t]))) <= vals[0] for t in toks}
        elif rule == "veto":
            keep_seq = all(math.exp(lr[t]) >= vals[0] for t in toks)
            keep = {t: keep_seq for t in toks}
        elif rule == "opsm":
            n = max(len(toks), 1)
            drift = sum(roll[b][t] - cur[b][t] for t in toks) / n
            a = sum(adv[b][t] for t in toks) / n
            keep = {t: not (a < 0 and drift > vals[0]) for t in toks}
        else:
            agg, metric = rule.rsplit("_", 1)
            low, high = (vals if len(vals) == 2 else ([-vals[0], vals[0]] if metric == "k1" else [0.0, vals[0]]))
            s = stat[metric]
            if agg == "token":
                keep = {t: low <= s[t] <= high for t in toks}
            else:
                values = [s[t] for t in toks] or [0.0]
                value = {"seq_sum": sum(values), "seq_mean": sum(values) / len(values), "seq_max": max(values)}[agg]
                keep = {t: low <= value <= high for t in toks}
        out.append([bool(keep.get(t, False)) for t in range(len(old[b]))])
    return torch.tensor(out)


CRITERIA = ["token_k1:0.3", "token_k1:-0.2:0.4", "token_k2:0.05", "token_k3:0.04", "seq_sum_k1:-0.5:0.6",
            "seq_sum_k2:0.3", "seq_sum_k3:0.2", "seq_mean_k1:0.1", "seq_mean_k2:0.04", "seq_mean_k3:0.05",
            "seq_max_k2:0.1", "seq_max_k3:0.1", "token_kpop:0.01", "opsm:0.05", "opsm:-0.1", "veto:0.7"]


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("seed", [0, 1])
def test_each_criterion_keeps_the_tokens_its_loop_reference_keeps(criterion, seed):
    inputs = random_inputs(batch=8, length=12, seed=seed, mismatch_scale=(0.02, 0.6))
    expected_keep = reference_keep(criterion, inputs)
    on = inputs["action_mask"] > 0
    rejected = rejected_by([criterion], inputs)
    assert torch.equal(rejected, on & ~expected_keep), criterion
    assert 0 < int(rejected.sum()) < int(on.sum()), "the setting must reject some tokens, not all"


# ----------------------------------------------------------------------------- old gates
def correction_rejected(name, inputs, **kw):
    correction, batch = correction_output(name, inputs, **kw)
    return correction.rejected


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", [3, 4])
def test_the_old_gates_are_special_cases_of_the_criteria(seed, dtype):
    inputs = random_inputs(batch=16, length=20, seed=seed, mismatch_scale=(0.01, 0.5), dtype=dtype)
    def log_band(low, high):
        return f"{math.log(low)}:{math.log(high)}"

    cases = [
        (correction_rejected("seq-mis", inputs, threshold=(0.8, 1.25)), f"seq_sum_k1:{log_band(0.8, 1.25)}"),
        (correction_rejected("geo-mask", inputs, threshold=(0.97, 1.03)), f"seq_mean_k1:{log_band(0.97, 1.03)}"),
        (correction_rejected("icepop", inputs, threshold=(0.8, 1.25)), f"token_k1:{log_band(0.8, 1.25)}"),
        (correction_rejected("trm", inputs, trm_max_delta=0.05), "seq_max_k2:0.05"),
        (correction_rejected("trm", inputs, trm_max_delta=None, trm_avg_delta=0.01), "seq_mean_k3:0.01"),
    ]
    on = inputs["action_mask"] > 0
    for gate_rejected, criterion in cases:
        assert 0 < int(gate_rejected.sum()) < int(on.sum()), criterion
        assert torch.equal(rejected_by([criterion], inputs), gate_rejected), criterion


# ----------------------------------------------------------------------------- the loss
def run(inputs, **kw):
    inputs = {k: (v.detach().clone().requires_grad_() if k == "log_probs" else v) for k, v in inputs.items()}
    module = PolicyLoss(**kw)
    loss = module(**inputs)[0]
    loss.backward()
    return loss, inputs["log_probs"].grad, module.metrics


@pytest.mark.parametrize("correction", ["none", "tis", "icepop", "seq-mis"])
@pytest.mark.parametrize("token_level", [True, False])
def test_criteria_and_the_correction_are_and_combined_and_rejected_tokens_stay_in_the_denominator(correction,
                                                                                                  token_level):
    inputs = random_inputs(batch=8, length=12, seed=5, mismatch_scale=(0.02, 0.5))
    criteria = ("token_k2:0.05", "seq_max_k3:0.3")
    kw = dict(token_level_loss=token_level)
    if correction != "none":
        kw.update(enable_vllm_is_correction=True, vllm_is_correction_type=correction,
                  vllm_is_truncated_threshold=(0.5, 2.0))
    loss, grad, _ = run(inputs, **kw)
    loss_r, grad_r, metrics = run(inputs, rejection=criteria, **kw)
    keep = reference_keep(criteria[0], inputs) & reference_keep(criteria[1], inputs)
    assert 0 < int(keep.sum()) < int((inputs["action_mask"] > 0).sum())
    # Same denominators: every kept token's gradient is unchanged, every rejected token's is 0.
    assert torch.allclose(grad_r, grad * keep, atol=1e-12, rtol=0)
    assert torch.equal(grad_r == 0, (grad == 0) | ~keep)
    on = inputs["action_mask"] > 0
    assert metrics["rejection/masked_frac"].item() == pytest.approx((on & ~keep).sum().item() / on.sum().item())
    if token_level:
        assert loss_r.item() != pytest.approx(loss.item())


def test_the_loss_equals_the_kept_terms_over_every_action_token():
    inputs = random_inputs(batch=6, length=10, seed=6, mismatch_scale=(0.02, 0.5))
    log_rho = (inputs["old_log_probs"] - inputs["rollout_log_probs"]).tolist()
    ratio = (inputs["log_probs"] - inputs["old_log_probs"]).exp().tolist()
    adv, mask = inputs["advantages"].tolist(), inputs["action_mask"].tolist()
    keep = reference_keep("token_k1:0.3", inputs).tolist()
    total, n = 0.0, 0
    for b in range(len(mask)):
        for t in range(len(mask[b])):
            if mask[b][t] > 0:
                n += 1
                if keep[b][t]:
                    r, a = ratio[b][t], adv[b][t]
                    ppo = -min(r * a, min(max(r, 0.8), 1.2) * a)
                    total += ppo * min(max(math.exp(log_rho[b][t]), 0.5), 5.0)
    loss, _, _ = run(inputs, enable_vllm_is_correction=True, vllm_is_correction_type="tis",
                     rejection=["token_k1:0.3"])
    assert loss.item() == pytest.approx(total / n, rel=1e-12)


def test_metrics_report_each_criterion_at_its_own_unit():
    inputs = random_inputs(batch=8, length=12, seed=7, mismatch_scale=(0.02, 0.5))
    _, _, m = run(inputs, rejection=["token_k1:0.3", "seq_mean_k3:0.02"])
    on = inputs["action_mask"] > 0
    token_keep = reference_keep("token_k1:0.3", inputs)
    seq_keep = reference_keep("seq_mean_k3:0.02", inputs)
    assert m["rejection/token_k1:0.3/masked_frac"].dim() == 0
    assert m["rejection/token_k1:0.3/masked_frac"].item() == pytest.approx(
        (on & ~token_keep).sum().item() / on.sum().item())
    per_seq = m["rejection/seq_mean_k3:0.02/masked_frac"]  # a sequence mean over the rows with tokens
    rows = [b for b in range(8) if on[b].any()]
    assert per_seq.dim() == 0
    assert per_seq.item() == pytest.approx(sum(float(not bool(seq_keep[b][0])) for b in rows) / len(rows))
    assert m["rejection/masked_frac"].item() == pytest.approx(
        (on & ~(token_keep & seq_keep)).sum().item() / on.sum().item())


def test_rejection_needs_the_rollout_log_probs():
    inputs = random_inputs()
    inputs.pop("rollout_log_probs")
    module = PolicyLoss(rejection=["veto:0.5"])
    assert module.config.needs_rollout_log_probs
    with pytest.raises(ValueError, match="rollout_log_probs"):
        module(**inputs)


# ----------------------------------------------------------------------------- parsing
def test_a_single_k1_value_means_a_symmetric_band_and_k2_k3_take_an_upper_bound():
    assert (parse_criterion("token_k1:0.3").low, parse_criterion("token_k1:0.3").high) == (-0.3, 0.3)
    assert (parse_criterion(" seq_max_k2:0.05 ").low, parse_criterion("seq_max_k2:0.05").high) == (0.0, 0.05)
    assert parse_criterion("seq_max_k2:0.05").per_sequence and not parse_criterion("token_kpop:0.1").per_sequence
    assert parse_rejection("veto:0.5")[0].name == "veto:0.5"
    assert parse_rejection(None) == ()


@pytest.mark.parametrize("bad,reason", [
    ("seq_max_k1:0.3", "k1 is signed"),
    ("token_k4:0.3", "unknown rejection criterion"),
    ("seq_median_k2:0.3", "unknown rejection criterion"),
    ("seq_max_k2:0.0", "upper bound > 0"),
    ("seq_max_k2:0.1:0.2", "exactly one value"),
    ("token_k1:0.1:0.2", "must contain 0"),
    ("token_k1:-0.1", "H > 0"),
    ("token_k1:nan", "finite"),
    ("token_k1:inf", "finite"),
    ("token_k1:x", "not a number"),
    ("token_k1", "HIGH or LOW:HIGH"),
    ("veto:1.5", "0 < LOW < 1"),
    ("token_kpop:-1", "upper bound > 0"),
    ("opsm", "exactly one value"),
])
def test_a_bad_criterion_is_refused_with_its_reason(bad, reason):
    with pytest.raises(ValueError, match=reason):
        resolve_config(rejection=[bad])


def test_a_criterion_given_twice_or_not_as_a_string_is_refused():
    with pytest.raises(ValueError, match="given twice"):
        resolve_config(rejection=["veto:0.5", "veto:0.5"])
    with pytest.raises(ValueError, match="must be a string"):
        resolve_config(rejection=[0.5])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.0, 3.0), token_level=st.booleans(),
       criteria=st.lists(st.sampled_from(CRITERIA), min_size=1, max_size=4, unique=True))
def test_any_input_and_any_criteria_give_a_finite_loss_and_fractions_in_range(seed, scale, token_level, criteria):
    inputs = random_inputs(seed=seed, policy_scale=scale, mismatch_scale=scale)
    loss, grad, m = run(inputs, rejection=criteria, token_level_loss=token_level, enable_vllm_is_correction=True,
                        vllm_is_correction_type="tis")
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    for name, value in m.items():
        if name.startswith("rejection/"):
            assert ((value >= 0) & (value <= 1)).all(), name
    token_criteria = [v for k, v in m.items() if k.startswith("rejection/token_") and k.endswith("/masked_frac")]
    if token_criteria:  # a token rejected by one criterion is rejected overall
        assert m["rejection/masked_frac"] >= max(token_criteria) - 1e-6
