import pytest
import torch
from helpers import assert_close_lists, correction_output, random_inputs
from reference import correction_coefficients


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", ["reinforce_pro", "prefix-mask"])
@pytest.mark.parametrize("band", [(0.5, 5.0), (0.85, 1.2)])
def test_prefix_gate_matches_float64_loop_reference(name, band, seed):
    inputs = random_inputs(seed=seed, mismatch_scale=0.4)
    out, _ = correction_output(name, inputs, threshold=band)
    expected = correction_coefficients(name, inputs["old_log_probs"], inputs["rollout_log_probs"],
                                       inputs["action_mask"], *band)
    assert_close_lists(out.coef, expected)


def test_prefix_gate_is_causal_a_late_burst_keeps_the_earlier_tokens():
    T = 10
    old = torch.full((1, T), -1.0, dtype=torch.float64)
    roll = old.clone()
    roll[0, 7] = -4.0  # rho_7 = e^3: the prefix mean jumps above the band from t = 7 on
    inputs = {"log_probs": old.clone().requires_grad_(), "old_log_probs": old, "rollout_log_probs": roll,
              "advantages": torch.ones(1, T, dtype=torch.float64), "action_mask": torch.ones(1, T, dtype=torch.float64)}
    out, _ = correction_output("reinforce_pro", inputs, threshold=(0.8, 1.25))
    assert (out.coef[0, :7] == 1).all()
    assert (out.coef[0, 7:] == 0).all()


def test_prefix_gate_keeps_the_unclamped_token_ratio_like_the_fork():
    """0.9.x fork semantics: kept tokens carry rho_t itself, even when rho_t is outside the band."""
    T = 20
    old = torch.full((1, T), -1.0, dtype=torch.float64)
    roll = old.clone()
    roll[0, 15] = -1.0 - 1.0  # rho_15 = e (2.72 > 2.0), but the prefix mean e^(1/16) stays in band
    inputs = {"log_probs": old.clone().requires_grad_(), "old_log_probs": old, "rollout_log_probs": roll,
              "advantages": torch.ones(1, T, dtype=torch.float64), "action_mask": torch.ones(1, T, dtype=torch.float64)}
    out, _ = correction_output("reinforce_pro", inputs, threshold=(0.5, 2.0))
    assert torch.isclose(out.coef[0, 15], torch.tensor(torch.e, dtype=torch.float64))
