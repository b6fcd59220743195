import math

import pytest
import torch
from helpers import assert_close_lists, correction_output, random_inputs
from reference import correction_coefficients

SEQUENCE_TYPES = ["seq-mask-tis", "geo-mask", "seq-tis", "seq-mis"]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", SEQUENCE_TYPES)
@pytest.mark.parametrize("band", [(0.5, 5.0), (0.9, 1.1), (0.0, 1.5)])
def test_sequence_coefficients_match_float64_loop_reference(name, band, seed):
    inputs = random_inputs(seed=seed, mismatch_scale=0.25)
    out, _ = correction_output(name, inputs, threshold=band)
    expected = correction_coefficients(name, inputs["old_log_probs"], inputs["rollout_log_probs"],
                                       inputs["action_mask"], *band)
    assert_close_lists(out.coef, expected)


@pytest.mark.parametrize("name", ["seq-mask-tis", "geo-mask", "seq-mis"])
def test_sequence_gates_keep_or_drop_whole_sequences(name):
    inputs = random_inputs(batch=16, seed=11, mismatch_scale=0.4)
    out, batch = correction_output(name, inputs, threshold=(0.8, 1.25))
    for b in range(16):
        kept = out.coef[b][batch.mask[b] > 0] > 0
        assert kept.all() or not kept.any(), f"sequence {b} is partly masked"
    assert out.filtered.shape == (16,)


def test_geo_mask_is_a_pure_filter():
    inputs = random_inputs(seed=2, mismatch_scale=0.3)
    out, batch = correction_output("geo-mask", inputs, threshold=(0.5, 2.0))
    assert set(out.coef[batch.mask > 0].unique().tolist()) <= {0.0, 1.0}


def test_seq_tis_puts_one_clamped_weight_on_every_token():
    inputs = random_inputs(seed=5, mismatch_scale=0.5)
    out, batch = correction_output("seq-tis", inputs, threshold=(0.5, 2.0))
    for b in range(out.coef.shape[0]):
        row = out.coef[b][batch.mask[b] > 0]
        assert torch.allclose(row, row[0].expand_as(row))
        assert 0.5 <= row[0] <= 2.0
    assert not out.rejected.any()


def test_sequence_ratio_gates_survive_sums_beyond_the_exp_clamp():
    """A 400-token sequence with log rho_t = 0.1 has log rho(y) = 40: rejected, never inf/NaN."""
    T = 400
    old = torch.full((1, T), -1.0, dtype=torch.float64)
    inputs = {"log_probs": old.clone().requires_grad_(), "old_log_probs": old, "rollout_log_probs": old - 0.1,
              "advantages": torch.ones(1, T, dtype=torch.float64), "action_mask": torch.ones(1, T, dtype=torch.float64)}
    mis, _ = correction_output("seq-mis", inputs, threshold=(0.5, 5.0))
    tis, _ = correction_output("seq-tis", inputs, threshold=(0.5, 5.0))
    geo, _ = correction_output("geo-mask", inputs, threshold=(0.5, 5.0))
    assert (mis.coef == 0).all()
    assert torch.allclose(tis.coef, torch.full_like(tis.coef, 5.0))
    assert (geo.coef == 1).all(), f"rho_geo = e^0.1 = {math.exp(0.1):.3f} lies in the band"
