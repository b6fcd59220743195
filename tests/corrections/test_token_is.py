import pytest
import torch
from helpers import assert_close_lists, correction_output, random_inputs
from reference import correction_coefficients

from openrlhf_offpolicy.corrections.stats import in_band


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", ["tis", "icepop"])
@pytest.mark.parametrize("band", [(0.5, 5.0), (0.8, 1.25), (0.0, 2.0)])
def test_token_coefficients_match_float64_loop_reference(name, band, seed):
    inputs = random_inputs(seed=seed, mismatch_scale=0.5)
    out, _ = correction_output(name, inputs, threshold=band)
    expected = correction_coefficients(name, inputs["old_log_probs"], inputs["rollout_log_probs"],
                                       inputs["action_mask"], *band)
    assert_close_lists(out.coef, expected)


def test_tis_never_drops_a_token_and_stays_in_band():
    inputs = random_inputs(seed=3, mismatch_scale=2.0)
    out, batch = correction_output("tis", inputs, threshold=(0.5, 2.0))
    kept = batch.mask > 0
    assert not out.rejected.any()
    assert in_band(out.coef[kept], 0.5, 2.0).all()
    assert out.filtered.any(), "a mismatch this large must clamp some tokens"


def test_icepop_keeps_exactly_the_in_band_tokens_with_their_raw_ratio():
    inputs = random_inputs(seed=4, mismatch_scale=1.0)
    out, batch = correction_output("icepop", inputs, threshold=(0.5, 2.0))
    rho = torch.exp(batch.old_log_probs - batch.rollout_log_probs)
    inside = (rho >= 0.5) & (rho <= 2.0) & (batch.mask > 0)
    assert torch.equal(out.coef > 0, inside)
    assert torch.allclose(out.coef[inside], rho[inside])
    assert torch.equal(out.rejected, ~inside & (batch.mask > 0))
