"""The exact estimator bench confirms the theory the papers state (TIS, Geo-Mask / Seq-MIS, TRM; each check < 1 min)."""

import math

import pytest
import torch

from openrlhf_offpolicy.lab.estimators import METHODS, ExactProblem, policy_loss, run_bench
from openrlhf_offpolicy.lab.tabular import enumerate_sequences, make_problem, sequence_probs

LENGTHS = [1, 2, 4, 6, 8]


def _correction(name, band=None, **params):
    band = {} if band is None else {"vllm_is_truncated_threshold": band}
    return dict(enable_vllm_is_correction=True, vllm_is_correction_type=name, **band, **params)


# The settings each theorem below is checked at (bands sized for these problems' mismatch, KL 0.01 - 0.05).
SETTINGS = {
    "tis [0, 2]": _correction("tis", (0.0, 2.0)),
    "seq-mis [0.5, 2]": _correction("seq-mis", (0.5, 2.0)),
    "geo-mask [0.9, 1.1]": _correction("geo-mask", (0.9, 1.1)),
    "trm max k2 0.02": _correction("trm", trm_max_delta=0.02),
    "trm avg k3 0.02": _correction("trm", trm_max_delta=None, trm_avg_delta=0.02),
}
SETTINGS.update(METHODS)


def bench(methods, lengths=LENGTHS, kls=(0.01,), **kwargs):
    results = run_bench(lengths, kls, methods={m: SETTINGS[m] for m in methods}, progress=False, **kwargs)
    return {(r.method, r.length, r.kl): r for r in results}


def test_enumeration_is_a_probability_distribution_and_mu_hits_the_target_kl():
    problem = make_problem(target_kl=0.02)
    assert problem.achieved_kl == pytest.approx(0.02, rel=1e-6)
    seqs = enumerate_sequences(3, 5)
    for logits in (problem.pi_logits, problem.mu_logits):
        assert sequence_probs(logits, seqs, problem.prompt_dist).sum().item() == pytest.approx(1.0, abs=1e-12)


def test_true_gradient_matches_autograd_of_the_exact_objective():
    exact = ExactProblem(make_problem(target_kl=0.01), vocab=3, length=4)
    theta = exact.problem.pi_logits.clone().requires_grad_()
    objective = (sequence_probs(theta, exact.seqs, exact.problem.prompt_dist) * exact.reward).sum()
    objective.backward()
    assert torch.allclose(theta.grad, exact.true_grad, atol=1e-12)


@pytest.mark.parametrize("kl", [0.002, 0.05])
def test_untruncated_sequence_is_is_exactly_unbiased(kl):
    stats = bench(["seq IS"], kls=(kl,))
    for T in LENGTHS:
        assert stats[("seq IS", T, kl)].bias < 1e-9


def test_token_is_is_biased_and_its_bias_grows_with_length():
    stats = bench(["token IS", "no correction"])
    bias = [stats[("token IS", T, 0.01)].bias for T in LENGTHS]
    assert bias[0] < 1e-9, "one token: the state distributions agree and token IS is exact"
    assert all(b > a for a, b in zip(bias, bias[1:])), bias
    assert bias[-1] > 0.1
    assert all(stats[("no correction", T, 0.01)].bias > stats[("token IS", T, 0.01)].bias for T in LENGTHS)


def test_sequence_is_variance_grows_exponentially_with_length():
    """E_mu[rho(y)^2] = prod_t (1 + chi^2_t): the variance relative to token IS grows geometrically."""
    stats = bench(["seq IS", "token IS"], lengths=[2, 4, 6, 8], kls=(0.1,))
    ratio = [stats[("seq IS", T, 0.1)].variance / stats[("token IS", T, 0.1)].variance for T in [2, 4, 6, 8]]
    growth = [b / a for a, b in zip(ratio, ratio[1:])]
    assert all(g > 1.25 for g in growth), (ratio, growth)
    assert ratio[-1] > 2.5 * ratio[0]


def test_seq_mis_acceptance_falls_with_length_while_geo_mask_does_not():
    stats = bench(["seq-mis [0.5, 2]", "geo-mask [0.9, 1.1]"], lengths=[1, 2, 4, 6, 8, 10])
    mis = [stats[("seq-mis [0.5, 2]", T, 0.01)].accept for T in [1, 2, 4, 6, 8, 10]]
    geo = [stats[("geo-mask [0.9, 1.1]", T, 0.01)].accept for T in [1, 2, 4, 6, 8, 10]]
    assert all(b < a for a, b in zip(mis, mis[1:])), mis
    assert geo[-1] >= geo[0] and min(geo[1:]) > 0.85, geo


def test_trm_max_acceptance_follows_the_one_minus_p_to_the_t_law_and_trm_avg_does_not():
    """i.i.d. tokens (the paper's setting): P(accept) = (1 - p)^T for the max criterion exactly,
    while the mean criterion concentrates (mean k3 -> KL < delta) and its acceptance recovers."""
    lengths = [1, 2, 3, 4, 6, 8]
    stats = bench(["trm max k2 0.02", "trm avg k3 0.02"], lengths=lengths, markov=False, sharpness=0.7)
    p = 1 - stats[("trm max k2 0.02", 1, 0.01)].accept
    assert 0.05 < p < 0.5
    for T in lengths:
        assert stats[("trm max k2 0.02", T, 0.01)].accept == pytest.approx((1 - p) ** T, rel=1e-9)
    avg = [stats[("trm avg k3 0.02", T, 0.01)].accept for T in lengths]
    assert avg[-1] > avg[1] and avg[-1] > 3 * (1 - p) ** lengths[-1], avg


def test_trm_max_acceptance_decays_geometrically_with_markov_tokens_too():
    lengths = [2, 3, 4, 5, 6, 7, 8]
    stats = bench(["trm max k2 0.02"], lengths=lengths)
    acc = [stats[("trm max k2 0.02", T, 0.01)].accept for T in lengths]
    per_token = [b / a for a, b in zip(acc, acc[1:])]
    assert max(per_token) - min(per_token) < 1e-3 and per_token[0] < 1, per_token


GATES = {
    "geo-mask [0.9, 1.1]": lambda lr, mu, pi: 0.9 <= math.exp(sum(lr) / len(lr)) <= 1.1,
    "seq-mis [0.5, 2]": lambda lr, mu, pi: 0.5 <= math.exp(sum(lr)) <= 2.0,
    "trm max k2 0.02": lambda lr, mu, pi: max(0.5 * v * v for v in lr) <= 0.02,
    "trm avg k3 0.02": lambda lr, mu, pi: sum(math.exp(v) - 1 - v for v in lr) / len(lr) <= 0.02,
}


@pytest.mark.parametrize("method", sorted(GATES))
def test_every_gates_accepted_set_obeys_its_threshold(method):
    exact = ExactProblem(make_problem(target_kl=0.02, seed=3), vocab=3, length=5)
    weights = exact.gradient_weights(policy_loss(SETTINGS[method]))
    log_rho = (exact.log_pi - exact.log_mu).tolist()  # rho_t = pi_old / pi_roll
    kept = (weights != 0).all(dim=-1).tolist()
    dropped = (weights == 0).all(dim=-1).tolist()
    for n in range(len(log_rho)):
        assert kept[n] or dropped[n], "a sequence gate keeps or drops whole sequences"
        assert kept[n] == GATES[method](log_rho[n], None, None), (method, n)
    assert 0 < sum(kept) < len(kept)


def test_icepop_keeps_exactly_the_tokens_inside_its_band():
    exact = ExactProblem(make_problem(target_kl=0.05, seed=4), vocab=3, length=4)
    weights = exact.gradient_weights(policy_loss(_correction("icepop", (0.8, 1.25))))
    rho = (exact.log_pi - exact.log_mu).exp()
    inside = (rho >= 0.8) & (rho <= 1.25)
    assert torch.equal(weights != 0, inside) and not inside.all()


def test_the_bench_reads_the_real_policy_loss_gradient():
    """w_t from PolicyLoss equals A(y) c_t with c_t the correction's own coefficient."""
    exact = ExactProblem(make_problem(target_kl=0.02), vocab=3, length=3)
    weights = exact.gradient_weights(policy_loss(SETTINGS["tis [0, 2]"]))
    rho = (exact.log_pi - exact.log_mu).exp().clamp(max=2.0)
    assert torch.allclose(weights, exact.advantage[:, None] * rho)


def test_the_bench_lists_the_references_and_every_registered_preset_it_can_feed():
    """Derived from the registry: every preset is a row, except those needing top-K log-probs."""
    from openrlhf_offpolicy.corrections import resolve_config
    from openrlhf_offpolicy.lab.estimators import DEFAULT_METHODS, REFERENCES
    from openrlhf_offpolicy.presets import registered_presets

    presets = registered_presets()
    left_out = {name for name in presets if name not in METHODS}
    assert left_out == {name for name, kwargs in presets.items() if resolve_config(**kwargs).needs_topk}
    assert left_out and list(METHODS)[:len(REFERENCES)] == list(REFERENCES)
    assert set(DEFAULT_METHODS) <= set(METHODS)
