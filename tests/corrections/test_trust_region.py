import pytest
from helpers import assert_close_lists, correction_output, random_inputs
from reference import DIVERGENCE, correction_coefficients, trm_acceptance

TRM_SETTINGS = [
    dict(trm_max_delta=0.05),
    dict(trm_max_delta=None, trm_avg_delta=0.01),
    dict(trm_max_delta=0.1, trm_avg_delta=0.02),
    dict(trm_max_delta=0.02, trm_divergence="k3"),
    dict(trm_max_delta=0.01, trm_divergence="binary_kl"),
    dict(trm_max_delta=0.01, trm_avg_delta=0.002, trm_divergence="binary_kl"),
    dict(trm_max_delta=0.05, trm_reference="current"),
]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("params", TRM_SETTINGS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_trm_matches_float64_loop_reference(params, seed):
    inputs = random_inputs(batch=16, length=8, seed=seed, mismatch_scale=(0.005, 0.5))
    out, _ = correction_output("trm", inputs, **params)
    args = (inputs["old_log_probs"], inputs["rollout_log_probs"], inputs["action_mask"])
    cur = inputs["log_probs"].detach()
    expected = correction_coefficients("trm", *args, cur=cur, **params)
    assert_close_lists(out.coef, expected)
    accepted = trm_acceptance(*args, cur=cur, **params)
    assert 0 < sum(accepted) < len(accepted), "choose settings where the gate actually separates sequences"
    assert out.metrics["trm/accept_rate"].item() == pytest.approx(sum(accepted) / len(accepted))


def test_trm_accepted_sequences_obey_their_thresholds():
    inputs = random_inputs(batch=40, length=12, seed=7, mismatch_scale=0.15)
    out, batch = correction_output("trm", inputs, trm_max_delta=0.04, trm_avg_delta=0.008)
    roll, old = batch.rollout_log_probs.tolist(), batch.old_log_probs.tolist()
    for b in range(40):
        toks = [t for t in range(12) if batch.mask[b, t] > 0]
        kept = bool((out.coef[b] > 0).any())
        worst = max(DIVERGENCE["k2"](roll[b][t], old[b][t]) for t in toks)
        mean_k3 = sum(DIVERGENCE["k3"](roll[b][t], old[b][t]) for t in toks) / len(toks)
        assert kept == (worst <= 0.04 and mean_k3 <= 0.008)


def test_trm_needs_at_least_one_criterion():
    inputs = random_inputs()
    with pytest.raises(ValueError, match="trm_max_delta or trm_avg_delta"):
        correction_output("trm", inputs, trm_max_delta=None, trm_avg_delta=None)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name", ["tv-mask", "binary-kl-mask", "seq-tv-mask", "seq-binary-kl-mask"])
def test_upstream_divergence_gates_match_float64_loop_reference(name, seed):
    inputs = random_inputs(seed=seed, mismatch_scale=0.3)
    delta = 0.05 if "tv" in name else 0.01
    out, _ = correction_output(name, inputs, threshold=(0.0, delta))
    expected = correction_coefficients(name, inputs["old_log_probs"], inputs["rollout_log_probs"],
                                       inputs["action_mask"], 0.0, delta)
    assert_close_lists(out.coef, expected)
    assert (out.coef == 0).any() and (out.coef > 0).any()


def test_trm_against_current_policy_reads_log_probs_without_their_gradient():
    inputs = random_inputs(seed=1, mismatch_scale=0.1)
    out, _ = correction_output("trm", inputs, trm_reference="current", trm_max_delta=0.05)
    assert not out.coef.requires_grad
