import torch
from helpers import random_inputs
from reference import aggregate

from openrlhf_offpolicy.corrections import aggregate_loss


def test_token_and_sequence_means_match_the_loop_reference():
    inputs = random_inputs(batch=6, length=7, seed=1)
    values, mask = inputs["advantages"], inputs["action_mask"]
    assert torch.isclose(aggregate_loss(values, mask, True), torch.tensor(aggregate(values, mask, True),
                                                                         dtype=torch.float64))
    assert torch.isclose(aggregate_loss(values, mask, False), torch.tensor(aggregate(values, mask, False),
                                                                          dtype=torch.float64))


def test_global_normalisers_make_micro_batches_sum_to_the_full_batch():
    inputs = random_inputs(batch=8, length=6, seed=2)
    values, mask = inputs["advantages"], inputs["action_mask"]
    n_tok, n_seq = mask.sum(), (mask.sum(-1) > 0).sum()
    for token_level in (True, False):
        full = aggregate_loss(values, mask, token_level, 1, n_tok, n_seq)
        parts = sum(aggregate_loss(values[i:i + 3], mask[i:i + 3], token_level, 1, n_tok, n_seq) for i in (0, 3, 6))
        assert torch.isclose(full, parts)
        assert torch.isclose(full, aggregate_loss(values, mask, token_level))


def test_dp_size_scales_the_loss_and_an_empty_batch_gives_zero():
    inputs = random_inputs(batch=4, length=5, seed=3)
    values, mask = inputs["advantages"], inputs["action_mask"]
    assert torch.isclose(aggregate_loss(values, mask, True, 4, 10.0), 4 * aggregate_loss(values, mask, True, 1, 10.0))
    empty = torch.zeros_like(mask)
    for token_level in (True, False):
        assert aggregate_loss(values, empty, token_level).item() == 0.0
        assert aggregate_loss(values, empty, token_level, 1, 0.0, 0.0).item() == 0.0
