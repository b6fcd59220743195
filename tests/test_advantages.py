"""reinforce_max advantages against a float64 loop reference, and their defining properties."""

import math

import pytest
import torch
from helpers import ragged_mask

from openrlhf_offpolicy.advantages import reinforce_max_advantages


def reference(rewards, mask, n, uniform_scale=False):
    """Plain loops over groups, samples and tokens."""
    rewards, mask = rewards.tolist(), mask.tolist()
    out = [[0.0] * len(row) for row in mask]
    for g in range(len(rewards) // n):
        members = range(g * n, (g + 1) * n)
        rs = [rewards[i] for i in members]
        adv = {}
        for i in members:
            others = [rewards[j] for j in members if j != i]
            adv[i] = rewards[i] - sum(others) / len(others)
            if uniform_scale and max(rs) == min(rs):
                adv[i] = rewards[i] / n
        toks = [(i, t) for i in members for t in range(len(mask[i])) if mask[i][t] > 0 and adv[i] != 0]
        plus = [adv[i] for i, _ in toks if adv[i] > 0]
        minus = [adv[i] for i, _ in toks if adv[i] < 0]
        alpha = beta = 1.0
        if plus and minus:
            ratio = sum(plus) / sum(minus)
            alpha = math.sqrt(len(toks) / (sum(a * a for a in plus) + ratio ** 2 * sum(a * a for a in minus)))
            beta = -alpha * ratio
            alpha, beta = min(max(alpha, 1e-8), 10.0), min(max(beta, 1e-8), 10.0)
        for i in members:
            for t in range(len(mask[i])):
                if mask[i][t] > 0:
                    out[i][t] = adv[i] * (alpha if adv[i] > 0 else beta)
    return out


def inputs(groups=4, n=4, length=7, seed=0, levels=None):
    g = torch.Generator().manual_seed(seed)
    if levels is None:
        rewards = torch.randn(groups * n, generator=g, dtype=torch.float64)
    else:
        rewards = torch.tensor(levels, dtype=torch.float64)[torch.randint(len(levels), (groups * n,), generator=g)]
    return rewards, ragged_mask(groups * n, length, g)


@pytest.mark.parametrize("uniform_scale", [False, True])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels", [None, [0.0, 1.0]])
def test_reinforce_max_matches_the_loop_reference(seed, uniform_scale, levels):
    rewards, mask = inputs(seed=seed, levels=levels)
    out = reinforce_max_advantages(rewards, mask, 4, uniform_scale)
    assert torch.allclose(out, torch.tensor(reference(rewards, mask, 4, uniform_scale), dtype=torch.float64),
                          atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_each_unclamped_group_has_mean_zero_and_variance_one_over_its_nonzero_tokens(seed):
    rewards, mask = inputs(groups=5, n=6, length=9, seed=seed)
    out = reinforce_max_advantages(rewards, mask, 6).reshape(5, -1)
    for group in out:
        values = group[group != 0]
        assert values.mean().abs() < 1e-12
        assert (values * values).mean() == pytest.approx(1.0, abs=1e-12)


def test_signs_are_kept_and_zero_flat_and_one_signed_groups_are_left_unchanged():
    mask = torch.ones(6, 3, dtype=torch.float64)
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64)  # flat group, mixed group
    plain = reinforce_max_advantages(rewards, mask, 3)
    assert torch.equal(plain[:3], torch.zeros(3, 3, dtype=torch.float64))
    rloo = torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64)
    assert torch.equal(torch.sign(plain[3:, 0]), torch.sign(rloo))
    uniform = reinforce_max_advantages(rewards, mask, 3, uniform_scale=True)
    assert torch.allclose(uniform[:3], torch.full((3, 3), 1 / 3, dtype=torch.float64))  # one sign: unchanged r/n


def test_clamps_scale_factors_to_ten():
    rewards = torch.tensor([0.0, 1e-6, 0.0, 0.0], dtype=torch.float64)
    out = reinforce_max_advantages(rewards, torch.ones(4, 2, dtype=torch.float64), 4)
    rloo = rewards - (rewards.sum() - rewards) / 3
    assert torch.allclose(out[:, 0], rloo * 10.0)


@pytest.mark.parametrize("bad", [dict(group_size=1), dict(group_size=3), dict(rewards=torch.zeros(8, 1))])
def test_bad_shapes_and_group_sizes_are_clear_errors(bad):
    kwargs = {**dict(rewards=torch.zeros(8), action_mask=torch.ones(8, 4), group_size=4), **bad}
    with pytest.raises(ValueError):
        reinforce_max_advantages(**kwargs)
