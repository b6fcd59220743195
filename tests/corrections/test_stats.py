import torch
from helpers import ragged_mask

from openrlhf_offpolicy.corrections.stats import (
    log_in_band,
    masked_mean,
    prefix_mean,
    safe_exp,
    seq_mean,
)


def test_prefix_mean_matches_a_loop_over_masked_prefixes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 11, generator=g, dtype=torch.float64)
    mask = ragged_mask(6, 11, g)
    mask[2, 3] = 0  # a hole inside a sequence
    got = prefix_mean(x, mask)
    for b in range(6):
        seen = []
        for t in range(11):
            if mask[b, t] > 0:
                seen.append(x[b, t].item())
                assert abs(got[b, t].item() - sum(seen) / len(seen)) < 1e-12


def test_sequence_reductions_ignore_masked_tokens_and_empty_rows_give_zero():
    x = torch.tensor([[1.0, 5.0, 9.0], [2.0, -3.0, 7.0], [4.0, 4.0, 4.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert seq_mean(x, mask).tolist() == [3.0, -3.0, 0.0]
    assert masked_mean(x, torch.zeros_like(x)).item() == 0.0


def test_log_in_band_decides_huge_ratios_without_overflow():
    log_stat = torch.tensor([-1000.0, -0.1, 0.0, 0.1, 1000.0])
    assert log_in_band(log_stat, 0.5, 2.0).tolist() == [False, True, True, True, False]
    assert log_in_band(log_stat, 0.0, 2.0).tolist() == [True, True, True, True, False]
    assert torch.isfinite(safe_exp(torch.tensor([1e4, -1e4]))).all()


def test_normalized_ess_is_one_for_equal_weights_and_drops_with_rejections():
    from openrlhf_offpolicy.corrections.metrics import effective_sample_size

    mask = torch.ones(2, 4)
    assert effective_sample_size(torch.ones(2, 4), mask).item() == 1.0
    half = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    assert abs(effective_sample_size(half, mask).item() - 0.5) < 1e-7
    assert effective_sample_size(torch.zeros(2, 4), mask).item() == 0.0
