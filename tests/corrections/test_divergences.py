import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import binary_kl as ref_binary_kl
from reference import binary_tv as ref_binary_tv
from reference import k2 as ref_k2
from reference import k3 as ref_k3

from openrlhf_offpolicy.corrections.divergences import DIVERGENCES

REFERENCES = {"k2": ref_k2, "k3": ref_k3, "binary_tv": ref_binary_tv, "binary_kl": ref_binary_kl}
log_prob = st.floats(min_value=-12.0, max_value=-1e-4)


@pytest.mark.parametrize("name", sorted(REFERENCES))
@settings(max_examples=60, deadline=None)
@given(log_mu=log_prob, log_pi=log_prob)
def test_divergence_matches_scalar_reference(name, log_mu, log_pi):
    fn = DIVERGENCES.get(name).fn
    got = fn(torch.tensor([[log_mu]], dtype=torch.float64), torch.tensor([[log_pi]], dtype=torch.float64)).item()
    assert got == pytest.approx(REFERENCES[name](log_mu, log_pi), rel=1e-9, abs=1e-12)
    assert got >= -1e-12


def full_kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def test_k3_is_an_unbiased_estimator_of_kl_and_k2_is_not():
    g = torch.Generator().manual_seed(0)
    mu = torch.softmax(torch.randn(12, generator=g, dtype=torch.float64), 0)
    pi = torch.softmax(torch.randn(12, generator=g, dtype=torch.float64) * 1.5, 0)
    exact = full_kl(mu.tolist(), pi.tolist())
    log_mu, log_pi = mu.log().unsqueeze(0), pi.log().unsqueeze(0)
    e_k3 = (mu * DIVERGENCES.get("k3").fn(log_mu, log_pi)[0]).sum().item()
    e_k2 = (mu * DIVERGENCES.get("k2").fn(log_mu, log_pi)[0]).sum().item()
    assert e_k3 == pytest.approx(exact, rel=1e-10)
    assert abs(e_k2 - exact) > 1e-3


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), vocab=st.integers(3, 30), scale=st.floats(0.1, 3.0))
def test_binary_divergences_lower_bound_the_full_divergences(seed, vocab, scale):
    g = torch.Generator().manual_seed(seed)
    mu = torch.softmax(torch.randn(vocab, generator=g, dtype=torch.float64) * scale, 0)
    pi = torch.softmax(torch.randn(vocab, generator=g, dtype=torch.float64) * scale, 0)
    tv = 0.5 * (mu - pi).abs().sum().item()
    kl = full_kl(mu.tolist(), pi.tolist())
    for a in range(vocab):
        if not (1e-6 < mu[a] < 1 - 1e-6 and 1e-6 < pi[a] < 1 - 1e-6):
            continue  # the 1e-6 probability clamp makes the bound approximate at the extremes
        lm, lp = mu[a].log().view(1, 1), pi[a].log().view(1, 1)
        assert DIVERGENCES.get("binary_tv").fn(lm, lp).item() <= tv + 1e-12
        assert DIVERGENCES.get("binary_kl").fn(lm, lp).item() <= kl + 1e-12


def test_estimators_do_not_overflow_at_extreme_log_ratios():
    log_mu = torch.tensor([[-100.0, 0.0]])
    log_pi = torch.tensor([[0.0, -100.0]])
    for name in DIVERGENCES.names(needs_topk=False):
        out = DIVERGENCES.get(name).fn(log_mu, log_pi)
        assert torch.isfinite(out).all(), name
