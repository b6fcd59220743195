"""Top-K divergences over TopK(mu) ∪ {a_t} ∪ {other}: reference values, bounds, edge cases."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from openrlhf_offpolicy.corrections import DIVERGENCES, make_topk
from openrlhf_offpolicy.models import PolicyLoss


def reference_collapsed(mu, pi, topk_ids, sampled):
    """Loop reference: the two distributions over S = TopK ∪ {a} and 'other' (float64 lists)."""
    support = list(dict.fromkeys([i for i in topk_ids if i >= 0] + [sampled]))
    p = [mu[i] for i in support]
    q = [pi[i] for i in support]
    p.append(max(1.0 - sum(p), 1e-12))
    q.append(max(1.0 - sum(q), 1e-12))
    return p, q


def reference_tv(p, q):
    return 0.5 * sum(abs(a - b) for a, b in zip(p, q))


def reference_kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def topk_inputs(mu, pi, k, sampled):
    """Tensors for one token: mu's top-K ids (by mu), their log-probs under mu and pi."""
    ids = torch.topk(mu, k).indices
    return dict(
        log_mu=mu[sampled].log().view(1, 1), log_pi=pi[sampled].log().view(1, 1),
        topk=make_topk(ids.view(1, 1, k), mu[ids].log().view(1, 1, k), pi[ids].log().view(1, 1, k),
                       torch.tensor([[sampled]]), dtype=torch.float64),
    ), ids.tolist()


def random_pair(seed, vocab, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    mu = torch.softmax(torch.randn(vocab, generator=g, dtype=torch.float64) * scale, 0)
    pi = torch.softmax(torch.randn(vocab, generator=g, dtype=torch.float64) * scale, 0)
    sampled = int(torch.multinomial(mu, 1, generator=g))
    return mu, pi, sampled


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 3, 8])
def test_topk_divergences_match_the_float64_loop_reference(seed, k):
    mu, pi, sampled = random_pair(seed, vocab=12)
    inputs, ids = topk_inputs(mu, pi, k, sampled)
    p, q = reference_collapsed(mu.tolist(), pi.tolist(), ids, sampled)
    tv = DIVERGENCES.get("topk_tv").fn(inputs["log_mu"], inputs["log_pi"], inputs["topk"]).item()
    kl = DIVERGENCES.get("topk_kl").fn(inputs["log_mu"], inputs["log_pi"], inputs["topk"]).item()
    assert tv == pytest.approx(reference_tv(p, q), rel=1e-9, abs=1e-12)
    assert kl == pytest.approx(reference_kl(p, q), rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 100_000), vocab=st.integers(3, 40), k=st.integers(1, 20), scale=st.floats(0.2, 3.0))
def test_binary_le_topk_le_full_vocabulary_divergence(seed, vocab, k, scale):
    mu, pi, sampled = random_pair(seed, vocab, scale)
    k = min(k, vocab)
    inputs, _ = topk_inputs(mu, pi, k, sampled)
    full_tv = 0.5 * (mu - pi).abs().sum().item()
    full_kl = (mu * (mu / pi).log()).sum().item()
    args = (inputs["log_mu"], inputs["log_pi"])
    if 1e-6 < mu[sampled] < 1 - 1e-6 and 1e-6 < pi[sampled] < 1 - 1e-6:  # the binary ones clamp at 1e-6
        assert DIVERGENCES.get("binary_tv").fn(*args).item() <= DIVERGENCES.get("topk_tv").fn(
            *args, inputs["topk"]).item() + 1e-10
        assert DIVERGENCES.get("binary_kl").fn(*args).item() <= DIVERGENCES.get("topk_kl").fn(
            *args, inputs["topk"]).item() + 1e-10
    assert DIVERGENCES.get("topk_tv").fn(*args, inputs["topk"]).item() <= full_tv + 1e-10
    assert DIVERGENCES.get("topk_kl").fn(*args, inputs["topk"]).item() <= full_kl + 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_topk_equals_the_full_divergence_when_k_covers_the_support(seed):
    mu, pi, sampled = random_pair(seed, vocab=7)
    inputs, _ = topk_inputs(mu, pi, 7, sampled)
    args = (inputs["log_mu"], inputs["log_pi"], inputs["topk"])
    assert DIVERGENCES.get("topk_tv").fn(*args).item() == pytest.approx(0.5 * (mu - pi).abs().sum().item(), abs=1e-10)
    assert DIVERGENCES.get("topk_kl").fn(*args).item() == pytest.approx((mu * (mu / pi).log()).sum().item(), abs=1e-9)


def test_the_sampled_token_is_counted_once_inside_or_outside_the_top_k():
    mu = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    pi = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    for sampled, expected_support in ((0, [0, 1]), (3, [0, 1, 3])):
        inputs, ids = topk_inputs(mu, pi, 2, sampled)
        p, q = reference_collapsed(mu.tolist(), pi.tolist(), ids, sampled)
        assert len(p) == len(expected_support) + 1
        tv = DIVERGENCES.get("topk_tv").fn(inputs["log_mu"], inputs["log_pi"], inputs["topk"]).item()
        assert tv == pytest.approx(reference_tv(p, q))
        assert bool(inputs["topk"].sampled_in_topk.item()) == (sampled in ids)


def test_empty_slots_nan_slots_and_filtered_tokens_are_handled():
    mu = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    pi = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    ids = torch.tensor([[[0, 1, -1, 2]]])
    mu_lp = torch.tensor([[[mu[0].log(), mu[1].log(), 0.0, float("nan")]]], dtype=torch.float64)
    pi_lp = torch.tensor([[[pi[0].log(), pi[1].log(), 0.0, pi[2].log()]]], dtype=torch.float64)
    topk = make_topk(ids, mu_lp, pi_lp, torch.tensor([[0]]), dtype=torch.float64)
    assert topk.valid.tolist() == [[[True, True, False, False]]]
    p, q = reference_collapsed(mu.tolist(), pi.tolist(), [0, 1], 0)
    out = DIVERGENCES.get("topk_kl").fn(mu[0].log().view(1, 1), pi[0].log().view(1, 1), topk)
    assert out.item() == pytest.approx(reference_kl(p, q))
    minus_inf = make_topk(torch.tensor([[[0, 2]]]), torch.tensor([[[0.0, float("-inf")]]]),
                          torch.tensor([[[-0.1, -3.0]]]), torch.tensor([[0]]))
    assert torch.isfinite(DIVERGENCES.get("topk_kl").fn(torch.zeros(1, 1), torch.tensor([[-0.1]]), minus_inf)).all()


def test_policy_loss_uses_the_top_k_inputs_and_rejects_missing_or_misshapen_ones():
    g = torch.Generator().manual_seed(0)
    B, T, K, V = 3, 5, 4, 10
    logits_mu, logits_pi = torch.randn(B, T, V, generator=g), torch.randn(B, T, V, generator=g) * 1.2
    lmu, lpi = logits_mu.log_softmax(-1), logits_pi.log_softmax(-1)
    actions = torch.multinomial(lmu.exp().view(-1, V), 1, generator=g).view(B, T)
    ids = lmu.topk(K, dim=-1).indices
    log_probs = lpi.gather(-1, actions.unsqueeze(-1)).squeeze(-1).requires_grad_()
    kwargs = dict(old_log_probs=log_probs.detach(), advantages=torch.randn(B, T, generator=g),
                  rollout_log_probs=lmu.gather(-1, actions.unsqueeze(-1)).squeeze(-1))
    topk = dict(rollout_topk_ids=ids, rollout_topk_log_probs=lmu.gather(-1, ids), topk_log_probs=lpi.gather(-1, ids),
                action_ids=actions)
    loss_fn = PolicyLoss(policy_loss_type="dppo", dppo_divergence="topk_tv", dppo_delta=0.05)
    loss = loss_fn(log_probs, **kwargs, **topk)[0]
    loss.backward()
    assert torch.isfinite(loss) and 0 < loss_fn.metrics["dppo/masked_frac"] < 1
    with pytest.raises(ValueError, match="needs the rollout's top-K log-probs"):
        loss_fn(log_probs, **kwargs)
    with pytest.raises(ValueError, match="incomplete"):
        loss_fn(log_probs, **kwargs, **{k: v for k, v in topk.items() if k != "action_ids"})
    with pytest.raises(ValueError, match="must share one"):
        loss_fn(log_probs, **kwargs, **{**topk, "topk_log_probs": topk["topk_log_probs"][..., :2]})
    with pytest.raises(ValueError, match="but log_probs has shape"):
        loss_fn(log_probs[:, :3], **{k: v[:, :3] for k, v in kwargs.items()}, **topk)
