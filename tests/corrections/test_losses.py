"""Per-token values and gradient weights of every policy loss against the float64 loop reference."""

import pytest
import torch
from helpers import assert_close_lists, random_inputs, surrogate_output
from reference import gradient_weights, loss_gradient, token_losses

from openrlhf_offpolicy.corrections import POLICY_LOSSES
from openrlhf_offpolicy.models import PolicyLoss

# Every registered loss on its defaults, then settings that exercise other branches.
LOSS_SETTINGS = [(name, {}) for name in POLICY_LOSSES.names()] + [
    ("ppo", {"clip_eps_low": 0.1, "clip_eps_high": 0.28}),
    ("ppo", {"dual_clip": 3.0}),
    ("sapo", {"sapo_tau_pos": 0.5, "sapo_tau_neg": 2.0}),
    ("cispo", {"cispo_clip_range": (0.8, 1.2)}),
    ("dppo", {"dppo_divergence": "binary_kl", "dppo_delta": 0.01, "dppo_ratio_cap": 1.5}),
    ("is_reshape", {"is_reshape_kernel": "gaussian", "is_reshape_width": 0.5, "is_reshape_gamma": 0.3}),
    ("is_reshape", {"is_reshape_kernel": "cauchy", "is_reshape_gamma_mode": "correctness", "is_reshape_gamma": 0.2}),
    ("is_reshape", {"is_reshape_kernel": "laplace", "is_reshape_gamma_mode": "advantage", "is_reshape_temp": 0.5}),
    ("gmpo", {"gmpo_clip_range": (-0.1, 0.2)}),
    ("vespo", {"vespo_k": (1.5, 4.0), "vespo_lambda": (2.5, 0.5)}),
    ("luspo", {"clip_eps_low": 0.1, "clip_eps_high": 0.28}),
    ("clip_cov", {"clip_cov_ratio": 0.1, "clip_cov_lb": -1.0, "clip_cov_ub": 1.0}),
    ("kl_cov", {"kl_cov_ratio": 0.2, "kl_cov_coef": 0.5}),
    ("glm5_is", {"glm5_is_clip_range": (0.5, 1.5)}),
    ("prime_dppo", {"prime_dppo_delta": (0.02, 0.05), "prime_dppo_tau": 0.3}),
    ("ipo", {"ipo_delta": 0.03, "ipo_tau": 0.2}),
    ("dro", {"dro_beta": 0.7}),
    ("a3po", {"a3po_alpha": 0.0}),
    ("a3po", {"a3po_alpha": 0.8, "a3po_behave_cap": 1.2, "clip_eps_low": 0.1, "clip_eps_high": 0.28}),
]
SETTING_IDS = [f"{t}-{'-'.join(f'{k}={v}' for k, v in p.items()) or 'default'}" for t, p in LOSS_SETTINGS]


def reference_kwargs(params):
    out = dict(params)
    for ours, ref in (("clip_eps_low", "eps_low"), ("clip_eps_high", "eps_high")):
        if ours in out:
            out[ref] = out.pop(ours)
    return out


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("loss_type,params", LOSS_SETTINGS, ids=SETTING_IDS)
def test_per_token_loss_matches_float64_loop_reference(loss_type, params, seed):
    inputs = random_inputs(seed=seed, policy_scale=0.4)
    torch.manual_seed(seed)  # clip_cov's random selection: the reference draws with the same seed
    out, batch = surrogate_output(loss_type, inputs, **params)
    torch.manual_seed(seed)
    expected = token_losses(loss_type, inputs["log_probs"].detach(), inputs["old_log_probs"], inputs["advantages"],
                            inputs["action_mask"], roll=inputs["rollout_log_probs"], **reference_kwargs(params))
    assert_close_lists(out.loss * batch.mask, expected, atol=1e-7, rtol=1e-6)


GRADIENT_SETTINGS = [(t, p) for t, p in LOSS_SETTINGS
                     if t in ("sapo", "cispo", "dppo", "is_reshape", "glm5_is", "topr")]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("loss_type,params", GRADIENT_SETTINGS,
                         ids=[i for i, (t, _) in zip(SETTING_IDS, LOSS_SETTINGS) if (t, _) in GRADIENT_SETTINGS])
def test_autograd_gradient_weight_equals_the_stated_weight(loss_type, params, seed):
    """d loss_t / d log pi_theta(y_t) = -A_t w_t with w_t the method's stated gradient weight."""
    inputs = random_inputs(seed=seed, policy_scale=0.5)
    out, batch = surrogate_output(loss_type, inputs, **params)
    (out.loss * batch.mask).sum().backward()
    grad = inputs["log_probs"].grad
    weights = gradient_weights(loss_type, inputs["log_probs"].detach(), inputs["old_log_probs"],
                               inputs["advantages"], inputs["action_mask"], roll=inputs["rollout_log_probs"], **params)
    expected = [[-a * w for a, w in zip(ra, rw)] for ra, rw in zip(inputs["advantages"].tolist(), weights)]
    assert_close_lists(grad * inputs["action_mask"], expected, atol=1e-9, rtol=1e-6)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("loss_type,params", LOSS_SETTINGS, ids=SETTING_IDS)
def test_autograd_gradient_of_the_aggregated_loss_equals_the_reference_gradient(loss_type, params, seed):
    """The whole PolicyLoss (its own aggregation, no correction) against the hand-derived gradient."""
    inputs = random_inputs(seed=seed, policy_scale=0.5)
    clip = {k: params[k] for k in ("clip_eps_low", "clip_eps_high") if k in params}
    method = {k: v for k, v in params.items() if k not in clip}
    torch.manual_seed(seed)
    PolicyLoss(policy_loss_type=loss_type, **params)(**inputs)[0].backward()
    torch.manual_seed(seed)
    expected = loss_gradient(loss_type, inputs["log_probs"].detach(), inputs["old_log_probs"], inputs["advantages"],
                             inputs["action_mask"], roll=inputs["rollout_log_probs"], **reference_kwargs(clip),
                             **method)
    assert_close_lists(inputs["log_probs"].grad, expected, atol=1e-10, rtol=1e-6)


def test_ppo_gradient_is_ratio_times_advantage_on_unclipped_tokens_and_zero_on_clipped():
    inputs = random_inputs(seed=1, policy_scale=0.5)
    out, batch = surrogate_output("ppo", inputs)
    (out.loss * batch.mask).sum().backward()
    ratio = torch.exp(inputs["log_probs"].detach() - inputs["old_log_probs"])
    expected = torch.where(out.clipped, 0.0, -inputs["advantages"] * ratio) * inputs["action_mask"]
    assert out.clipped.any() and (~out.clipped).any()
    assert torch.allclose(inputs["log_probs"].grad * inputs["action_mask"], expected)


def test_gspo_token_equals_gspo_when_the_advantage_is_constant_per_sequence():
    a = random_inputs(seed=5, policy_scale=0.15, per_sequence_advantage=True)
    b = {k: (v.detach().clone().requires_grad_() if k == "log_probs" else v) for k, v in a.items()}
    from openrlhf_offpolicy.models import PolicyLoss

    loss_seq = PolicyLoss(policy_loss_type="gspo")(**a)[0]
    loss_tok = PolicyLoss(policy_loss_type="gspo_token")(**b)[0]
    loss_seq.backward()
    loss_tok.backward()
    assert torch.allclose(loss_seq, loss_tok)
    assert torch.allclose(a["log_probs"].grad, b["log_probs"].grad)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.5])
def test_is_reshape_sech2_with_width_two_over_tau_has_sapo_gradients(tau):
    from openrlhf_offpolicy.models import PolicyLoss

    a = random_inputs(seed=9, policy_scale=0.6)
    b = {k: (v.detach().clone().requires_grad_() if k == "log_probs" else v) for k, v in a.items()}
    sapo = PolicyLoss(policy_loss_type="sapo", sapo_tau_pos=tau, sapo_tau_neg=tau)
    reshape = PolicyLoss(policy_loss_type="is_reshape", is_reshape_kernel="sech2", is_reshape_width=2 / tau,
                         is_reshape_gamma=1.0)
    loss_sapo, loss_reshape = sapo(**a)[0], reshape(**b)[0]
    loss_sapo.backward()
    loss_reshape.backward()
    assert torch.allclose(a["log_probs"].grad, b["log_probs"].grad, atol=1e-12)
    # The loss values differ by the constant (2/tau) * A: SAPO = IS-Reshape - (2/tau) A, token-mean.
    offset = (2 / tau * a["advantages"] * a["action_mask"]).sum() / a["action_mask"].sum()
    assert torch.allclose(loss_sapo, loss_reshape - offset)


def test_dppo_masks_only_tokens_moving_outward_beyond_delta():
    inputs = random_inputs(batch=30, length=10, seed=2, policy_scale=0.6)
    out, batch = surrogate_output("dppo", inputs, dppo_delta=0.05)
    lp, mu = batch.log_probs.detach(), batch.behaviour_log_probs
    r = torch.exp(lp - mu)
    tv = (lp.exp() - mu.exp()).abs()
    outward = ((batch.advantages > 0) & (r > 1)) | ((batch.advantages < 0) & (r < 1))
    expected = outward & (tv > 0.05) & (batch.mask > 0)
    assert torch.equal(out.clipped, expected)
    assert expected.any()


def test_dppo_anchors_on_rollout_log_probs_when_they_are_given():
    inputs = random_inputs(seed=3, policy_scale=0.3, mismatch_scale=0.5)
    from openrlhf_offpolicy.corrections import resolve_config
    from openrlhf_offpolicy.corrections.batch import make_policy_batch

    cfg = resolve_config(policy_loss_type="dppo")
    with_mu, _, _ = make_policy_batch(inputs["log_probs"], inputs["old_log_probs"], inputs["advantages"],
                                      inputs["action_mask"], inputs["rollout_log_probs"])
    out = POLICY_LOSSES.get("dppo").fn(with_mu, cfg)
    weights = gradient_weights("dppo", inputs["log_probs"].detach(), inputs["old_log_probs"], inputs["advantages"],
                               inputs["action_mask"], roll=inputs["rollout_log_probs"])
    (out.loss * with_mu.mask).sum().backward()
    expected = [[-a * w for a, w in zip(ra, rw)] for ra, rw in zip(inputs["advantages"].tolist(), weights)]
    assert_close_lists(inputs["log_probs"].grad * inputs["action_mask"], expected)
