"""Attack suite, reinforce_max: non-finite rewards are refused, huge finite ones stay finite."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from openrlhf_offpolicy.advantages import reinforce_max_advantages


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_reward_is_a_value_error_naming_the_sample(bad):
    rewards = torch.tensor([1.0, 0.0, bad, 2.0])
    with pytest.raises(ValueError, match="sample 2 .*not finite"):
        reinforce_max_advantages(rewards, torch.ones(4, 3), 2)


@pytest.mark.parametrize("reward", [3e38, 1e30, -3.4e38])
def test_a_huge_finite_reward_gives_finite_advantages(reward):
    rewards = torch.tensor([reward, 0.0, 1.0, -1.0], dtype=torch.float32)
    out = reinforce_max_advantages(rewards, torch.ones(4, 3), 4)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=4, max_size=4),
       st.booleans())
def test_any_finite_float32_rewards_give_finite_advantages(rewards, uniform):
    out = reinforce_max_advantages(torch.tensor(rewards, dtype=torch.float32), torch.ones(4, 2), 2, uniform)
    assert torch.isfinite(out).all()
