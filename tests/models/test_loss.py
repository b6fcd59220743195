"""The drop-in ``PolicyLoss``: upstream equivalence, fork semantics, invariances and bad input."""

import pytest
import torch
from helpers import random_inputs
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import aggregate, correction_coefficients, multiply, token_losses

from openrlhf_offpolicy.corrections import CORRECTIONS, POLICY_LOSSES, correction_choices
from openrlhf_offpolicy.models import PolicyLoss

ALL_CORRECTIONS = [c for c in CORRECTIONS.names(hidden=False)]
# A band each correction reads the way its registration says (ratio band or divergence bound).
BAND = {"ratio": (0.5, 5.0), "divergence": (0.0, 0.02), None: (0.5, 5.0)}


def combinable(loss, corr):
    """What resolve_config accepts: the registrations' accepts_correction / anchors_on_rollout / legacy."""
    entry = POLICY_LOSSES.get(loss)
    if corr == "none":
        return True
    if not entry.accepts_correction:
        return False
    # a rollout-anchored loss drops every (legacy) correction the same way: one of them suffices
    return not entry.anchors_on_rollout or corr == next(c for c in ALL_CORRECTIONS if CORRECTIONS.get(c).legacy)


COMBINATIONS = [(loss, corr) for loss in POLICY_LOSSES.names() for corr in ["none"] + ALL_CORRECTIONS
                if combinable(loss, corr)]
SPLIT_INVARIANT = [(loss, corr) for loss, corr in COMBINATIONS if POLICY_LOSSES.get(loss).split_invariant]


def kwargs_for(loss, corr):
    kw = {"policy_loss_type": loss}
    if corr != "none":
        kw.update(enable_vllm_is_correction=True, vllm_is_correction_type=corr,
                  vllm_is_truncated_threshold=BAND[CORRECTIONS.get(corr).threshold])
    return kw


def clone_inputs(inputs):
    return {k: (v.detach().clone().requires_grad_() if k == "log_probs" else v.clone()) for k, v in inputs.items()}


# ----------------------------------------------------------------------------- upstream 0.11.2
UPSTREAM_GATES = [
    dict(),
    dict(is_correction_level="token", is_correction_mode="clip"),
    dict(is_correction_level="token", is_correction_mode="mask"),
    dict(is_correction_level="seq", is_correction_mode="mask"),
    dict(is_correction_level="token", is_correction_mode="mask", is_correction_threshold=(0.8, 1.25)),
    dict(is_correction_level="token", is_correction_gating="binary_kl", is_correction_threshold=[0.0, 0.01]),
    dict(is_correction_level="seq", is_correction_gating="binary_kl", is_correction_threshold=[0.0, 0.01]),
    dict(is_correction_level="token", is_correction_gating="tv", is_correction_threshold=[0.0, 0.05]),
    dict(is_correction_level="seq", is_correction_gating="tv", is_correction_threshold=[0.0, 0.05]),
]
UPSTREAM_LOSSES = [
    dict(policy_loss_type="ppo"),
    dict(policy_loss_type="ppo", clip_eps_low=0.1, clip_eps_high=0.28, dual_clip=3.0),
    dict(policy_loss_type="ppo", token_level_loss=False),
    dict(policy_loss_type="gspo"),
]


@pytest.mark.parametrize("normalisers", [False, True], ids=["local", "global"])
@pytest.mark.parametrize("gate", UPSTREAM_GATES, ids=lambda g: "-".join(f"{v}" for v in g.values()) or "off")
@pytest.mark.parametrize("base", UPSTREAM_LOSSES, ids=lambda b: "-".join(f"{v}" for v in b.values()))
def test_upstream_kwargs_reproduce_openrlhf_0_11_2_outputs_and_gradients(base, gate, normalisers):
    from openrlhf.models.loss import PolicyLoss as UpstreamPolicyLoss

    inputs = random_inputs(batch=6, length=10, seed=7, policy_scale=0.3, mismatch_scale=0.3, dtype=torch.float32)
    extra = {}
    if normalisers:
        mask = inputs["action_mask"]
        extra = dict(dp_size=2, batch_num_tokens=mask.sum() * 1.5, global_batch_size=torch.tensor(9.0))
    ours_in, theirs_in = clone_inputs(inputs), clone_inputs(inputs)
    ours = PolicyLoss(**base, **gate)(**ours_in, **extra)
    theirs = UpstreamPolicyLoss(**base, **gate)(**theirs_in, **extra)
    for name, a, b in zip(("loss", "clip_ratio", "ppo_kl", "vllm_kl", "is_filter_ratio"), ours, theirs):
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.allclose(a.float(), b.float(), atol=1e-6, rtol=1e-5), (name, a, b)
    ours[0].backward()
    theirs[0].backward()
    assert torch.allclose(ours_in["log_probs"].grad, theirs_in["log_probs"].grad, atol=1e-7, rtol=1e-5)


SEED_TO_UPSTREAM = {
    "tis": dict(is_correction_level="token", is_correction_mode="clip"),
    "icepop": dict(is_correction_level="token", is_correction_mode="mask"),
    "seq-mask-tis": dict(is_correction_level="seq", is_correction_mode="mask"),
}


@pytest.mark.parametrize("loss", ["ppo", "gspo"])
@pytest.mark.parametrize("name", sorted(SEED_TO_UPSTREAM))
def test_seed_style_kwargs_match_the_fork_semantics_of_the_upstream_gate(name, loss):
    """0.9.x/0.10.x fork: tis = token clamp, icepop = token mask, seq-mask-tis = geo gate + rho_t."""
    from openrlhf.models.loss import PolicyLoss as UpstreamPolicyLoss

    inputs = random_inputs(batch=6, length=10, seed=3, mismatch_scale=0.4, dtype=torch.float32)
    ours = PolicyLoss(policy_loss_type=loss, enable_vllm_is_correction=True, vllm_is_correction_type=name,
                      vllm_is_truncated_threshold=[0.8, 1.25])(**clone_inputs(inputs))
    theirs = UpstreamPolicyLoss(policy_loss_type=loss, is_correction_threshold=[0.8, 1.25],
                                **SEED_TO_UPSTREAM[name])(**clone_inputs(inputs))
    for a, b in zip(ours, theirs):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, atol=1e-6)


# ----------------------------------------------------------------------------- full pipeline
@pytest.mark.parametrize("token_level", [True, False])
@pytest.mark.parametrize("loss,corr", COMBINATIONS)
def test_loss_equals_reference_surrogate_times_coefficient_aggregated(loss, corr, token_level):
    inputs = random_inputs(batch=6, length=8, seed=4, mismatch_scale=0.2)
    kw = kwargs_for(loss, corr)
    module = PolicyLoss(token_level_loss=token_level, **kw)
    torch.manual_seed(0)  # clip_cov draws its tokens at random: the reference draws with the same seed
    out = module(**inputs)
    cfg = module.config
    torch.manual_seed(0)
    surrogate = token_losses(loss, inputs["log_probs"].detach(), inputs["old_log_probs"], inputs["advantages"],
                             inputs["action_mask"], roll=inputs["rollout_log_probs"],
                             anchor_on_rollout=cfg.anchor_on_rollout, **dict(cfg.params))
    if cfg.correction_enabled:
        coef = correction_coefficients(cfg.correction, inputs["old_log_probs"], inputs["rollout_log_probs"],
                                       inputs["action_mask"], *cfg.threshold, cur=inputs["log_probs"].detach(),
                                       **{k: v for k, v in cfg.params.items() if k.startswith("trm_")})
        surrogate = multiply(surrogate, coef)
    expected = aggregate(surrogate, inputs["action_mask"], cfg.token_level_loss)
    assert out[0].item() == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("loss,corr", SPLIT_INVARIANT)
def test_micro_batches_with_global_normalisers_sum_to_the_full_batch_gradient(loss, corr):
    inputs = random_inputs(batch=9, length=7, seed=5, mismatch_scale=0.2)
    module = PolicyLoss(**kwargs_for(loss, corr))
    mask = inputs["action_mask"]
    norm = dict(batch_num_tokens=mask.sum(), global_batch_size=(mask.sum(-1) > 0).sum())
    full_in = clone_inputs(inputs)
    full = module(**full_in, **norm)[0]
    full.backward()
    parts_in = clone_inputs(inputs)
    total = 0.0
    for sl in (slice(0, 2), slice(2, 6), slice(6, 9)):
        part = {k: v[sl] for k, v in parts_in.items()}
        total = total + module(**part, **norm)[0]
    total.backward()
    assert torch.allclose(full, total)
    assert torch.allclose(full_in["log_probs"].grad, parts_in["log_probs"].grad, atol=1e-12)


@pytest.mark.parametrize("corr", ["icepop", "geo-mask", "seq-mis", "trm", "reinforce_pro"])
def test_rejected_tokens_keep_counting_in_the_denominator(corr):
    inputs = random_inputs(batch=8, length=8, seed=6, mismatch_scale=(0.01, 0.5))
    module = PolicyLoss(**{**kwargs_for("ppo", corr), "vllm_is_truncated_threshold": (0.9, 1.1)})
    loss = module(**inputs)[0]
    assert module.metrics["is/token_masked_frac"] > 0, "the setting must reject something"
    plain = PolicyLoss(policy_loss_type="ppo")
    per_token = []

    def capture(batch, cfg):
        out = POLICY_LOSSES.get("ppo").fn(batch, cfg)
        per_token.append(out.loss.detach())
        return out

    plain.surrogate = capture
    plain(**inputs)
    coef = torch.tensor(correction_coefficients(module.config.correction, inputs["old_log_probs"],
                                                inputs["rollout_log_probs"], inputs["action_mask"],
                                                *module.config.threshold,
                                                **{k: v for k, v in module.config.params.items()
                                                   if k.startswith("trm_")}), dtype=torch.float64)
    expected = (per_token[0] * coef * inputs["action_mask"]).sum() / inputs["action_mask"].sum()
    assert torch.isclose(loss, expected)


def test_rejecting_every_token_gives_zero_loss_and_zero_gradient():
    inputs = random_inputs(seed=8, mismatch_scale=5.0)
    module = PolicyLoss(enable_vllm_is_correction=True, vllm_is_correction_type="icepop",
                        vllm_is_truncated_threshold=(0.999, 1.001))
    loss = module(**inputs)[0]
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(inputs["log_probs"].grad, torch.zeros_like(inputs["log_probs"]))


@pytest.mark.parametrize("loss,corr", COMBINATIONS)
def test_an_all_masked_batch_gives_zero_loss_and_a_finite_zero_gradient(loss, corr):
    inputs = random_inputs(seed=9)
    inputs["action_mask"] = torch.zeros_like(inputs["action_mask"])
    module = PolicyLoss(**kwargs_for(loss, corr))
    for token_level in (True, False):
        module.config = module.config.__class__(**{**module.config.__dict__, "token_level_loss": token_level})
        inputs["log_probs"].grad = None
        out = module(**inputs)
        out[0].backward()
        assert out[0].item() == 0.0
        assert torch.equal(inputs["log_probs"].grad, torch.zeros_like(inputs["log_probs"]))
        assert all(torch.isfinite(v).all() for v in module.metrics.values())


@pytest.mark.parametrize("loss,corr", COMBINATIONS)
def test_non_finite_log_probs_are_masked_and_counted_never_nan(loss, corr):
    inputs = random_inputs(batch=4, length=6, seed=10, min_len=6)
    inputs["log_probs"] = inputs["log_probs"].detach().clone()
    inputs["log_probs"][0, 1] = float("nan")
    inputs["old_log_probs"][1, 2] = float("inf")
    inputs["rollout_log_probs"][2, 3] = float("-inf")
    inputs["advantages"][3, 0] = float("nan")
    inputs["log_probs"].requires_grad_()
    module = PolicyLoss(**kwargs_for(loss, corr))
    out = module(**inputs)
    out[0].backward()
    assert torch.isfinite(out[0])
    assert torch.isfinite(inputs["log_probs"].grad).all()
    assert inputs["log_probs"].grad[0, 1] == 0
    if module.rollout_in_loss:
        assert module.metrics["loss/nonfinite_frac"].item() == pytest.approx(4 / 24)
    else:  # pi_roll is read by the diagnostics only: its token stays in the loss (as upstream)
        assert module.metrics["loss/nonfinite_frac"].item() == pytest.approx(3 / 24)
        assert module.metrics["mismatch/nonfinite_frac"].item() == pytest.approx(1 / 21)
    assert all(torch.isfinite(v) for v in module.metrics.values())
    for v in out[1:]:
        assert v is None or torch.isfinite(v)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss,corr", [("ppo", "tis"), ("sapo", "geo-mask"), ("is_reshape", "trm"), ("dppo", "none")])
def test_half_precision_inputs_are_computed_in_float32(loss, corr, dtype):
    inputs = random_inputs(seed=11, dtype=dtype)
    as_float = {k: (v.detach().float().requires_grad_() if k == "log_probs" else v.float()) for k, v in inputs.items()}
    module = PolicyLoss(**kwargs_for(loss, corr))
    half_out = module(**inputs)
    float_out = module(**as_float)
    assert half_out[0].dtype == torch.float32
    assert torch.allclose(half_out[0], float_out[0], atol=1e-6)
    half_out[0].backward()
    assert inputs["log_probs"].grad.dtype == dtype and torch.isfinite(inputs["log_probs"].grad).all()


@pytest.mark.parametrize("shift", [100.0, -100.0])
@pytest.mark.parametrize("loss,corr", COMBINATIONS)
def test_log_ratios_of_plus_minus_100_do_not_overflow(loss, corr, shift):
    inputs = random_inputs(batch=3, length=5, seed=12, dtype=torch.float32)
    inputs["log_probs"] = (inputs["old_log_probs"] + shift).requires_grad_()
    inputs["rollout_log_probs"] = inputs["old_log_probs"] - shift
    module = PolicyLoss(**kwargs_for(loss, corr))
    out = module(**inputs)
    out[0].backward()
    assert torch.isfinite(out[0]) and torch.isfinite(inputs["log_probs"].grad).all()
    assert all(torch.isfinite(v).all() for v in module.metrics.values())


# ----------------------------------------------------------------------------- bad input
def test_a_correction_without_rollout_log_probs_is_a_clear_error():
    inputs = random_inputs()
    inputs.pop("rollout_log_probs")
    with pytest.raises(ValueError, match="needs rollout_log_probs"):
        PolicyLoss(enable_vllm_is_correction=True, vllm_is_correction_type="geo-mask")(**inputs)
    with pytest.raises(ValueError, match="needs rollout_log_probs"):
        PolicyLoss(policy_loss_type="gspo", is_correction_level="token")(**inputs)
    PolicyLoss(policy_loss_type="dppo")(**inputs)  # dppo falls back to mu = pi_old


@pytest.mark.parametrize("field,shape", [("old_log_probs", (5, 8)), ("advantages", (4, 9)),
                                         ("action_mask", (5, 9, 1)), ("rollout_log_probs", (9, 5))])
def test_shape_mismatches_are_clear_errors(field, shape):
    inputs = random_inputs(batch=5, length=9)
    inputs[field] = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"{field} has shape"):
        PolicyLoss(enable_vllm_is_correction=True)(**inputs)


def test_per_sequence_advantages_broadcast_and_one_dimensional_log_probs_are_rejected():
    inputs = random_inputs(batch=5, length=9)
    per_token = PolicyLoss()(**inputs)[0]
    inputs["advantages"] = inputs["advantages"][:, :1]
    assert torch.isfinite(PolicyLoss()(**inputs)[0])
    assert not torch.isclose(per_token, PolicyLoss()(**inputs)[0])
    with pytest.raises(ValueError, match=r"\[batch, actions\]"):
        PolicyLoss()(torch.zeros(9), torch.zeros(9), torch.zeros(9))


def test_positional_constructor_arguments_follow_upstreams_order():
    module = PolicyLoss(0.1, 0.28, 3.0, False, "gspo", "token", "clip")
    cfg = module.config
    assert (cfg.clip_eps_low, cfg.clip_eps_high, cfg.dual_clip, cfg.policy_loss_type) == (0.1, 0.28, 3.0, "gspo")
    assert cfg.anchor_on_rollout and not cfg.token_level_loss
    with pytest.raises(TypeError, match="multiple values"):
        PolicyLoss(0.1, clip_eps_low=0.2)


def test_unknown_forward_arguments_are_rejected():
    with pytest.raises(ValueError, match="unexpected PolicyLoss.forward argument"):
        PolicyLoss()(**random_inputs(), rollout_entropy=None)


# ----------------------------------------------------------------------------- metrics & theory
CORRECTION_METRICS = {"is/weight_mean", "is/weight_max", "is/ess", "is/token_masked_frac", "is/seq_masked_frac",
                "mismatch/k1", "mismatch/k3", "mismatch/max_k2"}
PER_SEQUENCE_METRICS = {"mismatch/chi2_seq", "mismatch/ppl_ratio"}


@pytest.mark.parametrize("loss,corr", COMBINATIONS)
def test_metrics_carry_the_spec_names_as_detached_scalars(loss, corr):
    module = PolicyLoss(**kwargs_for(loss, corr))
    module(**random_inputs(seed=13))
    names = set(module.metrics)
    if module.config.correction_enabled:
        assert CORRECTION_METRICS <= names
    assert {"mismatch/k1", "mismatch/k3", "mismatch/max_k2"} <= names
    assert set(module.config.metric_names) <= names, "a registered metric is missing"
    for name, v in module.metrics.items():
        assert not v.requires_grad and v.dim() == 0, name
    for name in PER_SEQUENCE_METRICS & names:  # sequence means reduce over sequences, not tokens
        assert module.statistics[name].count.item() <= random_inputs(seed=13)["log_probs"].shape[0], name


def test_mismatch_metrics_match_their_definitions():
    inputs = random_inputs(batch=3, length=4, seed=14, min_len=4)
    module = PolicyLoss(enable_vllm_is_correction=True, vllm_is_correction_type="tis")
    module(**inputs)
    log_rho = (inputs["old_log_probs"] - inputs["rollout_log_probs"]).tolist()
    flat = [v for row in log_rho for v in row]
    import math

    assert module.metrics["mismatch/k1"].item() == pytest.approx(sum(-v for v in flat) / 12, rel=1e-6)
    assert module.metrics["mismatch/k3"].item() == pytest.approx(sum(math.exp(v) - 1 - v for v in flat) / 12,
                                                                  rel=1e-6)
    assert module.metrics["mismatch/max_k2"].item() == pytest.approx(
        sum(max(v * v / 2 for v in row) for row in log_rho) / 3, rel=1e-6)


def acceptance(name, length, n=4000, sigma=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    old = torch.full((n, length), -1.0, dtype=torch.float64)
    rollout = old - sigma * torch.randn(n, length, generator=g, dtype=torch.float64)
    inputs = dict(log_probs=old.clone(), old_log_probs=old, rollout_log_probs=rollout,
                  advantages=torch.ones_like(old), action_mask=torch.ones_like(old))
    module = PolicyLoss(enable_vllm_is_correction=True, vllm_is_correction_type=name,
                        vllm_is_truncated_threshold=(0.8, 1.25))
    module(**inputs)
    return 1 - module.metrics["is/seq_masked_frac"].item()


def test_geo_mask_acceptance_does_not_decay_with_length_while_seq_mis_acceptance_does():
    lengths = [4, 16, 64, 256]
    geo = [acceptance("geo-mask", T) for T in lengths]
    mis = [acceptance("seq-mis", T) for T in lengths]
    assert all(b >= a - 0.01 for a, b in zip(geo, geo[1:])), geo
    assert geo[-1] > 0.99
    assert all(b < a for a, b in zip(mis, mis[1:])), mis
    assert mis[-1] < 0.6 * mis[0]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), combo=st.sampled_from(COMBINATIONS), scale=st.floats(0.0, 2.0),
       token_level=st.booleans())
def test_any_input_gives_a_finite_loss_and_metrics_in_range(seed, combo, scale, token_level):
    loss, corr = combo
    module = PolicyLoss(token_level_loss=token_level, **kwargs_for(loss, corr))
    inputs = random_inputs(seed=seed, policy_scale=scale, mismatch_scale=scale)
    out = module(**inputs)
    out[0].backward()
    assert torch.isfinite(out[0]) and torch.isfinite(inputs["log_probs"].grad).all()
    m = module.metrics
    fractions = [k for k in m if k.endswith(("_frac", "_rate"))] + ["is/ess", "sapo/gate_mean"]
    for key in fractions:
        if key in m:
            assert -1e-9 <= m[key].item() <= 1 + 1e-9, key
    assert 0.0 <= out[1].item() <= 1.0


def test_correction_choices_are_the_visible_corrections_and_their_aliases_each_resolving_to_itself():
    choices = correction_choices()
    for entry in CORRECTIONS:
        for name in (entry.name, *entry.aliases):
            assert (name in choices) == (not entry.hidden), name
            if not entry.hidden:
                cfg = PolicyLoss(enable_vllm_is_correction=True, vllm_is_correction_type=name,
                                 vllm_is_truncated_threshold=BAND[entry.threshold]).config
                assert cfg.correction == entry.name, name
    assert "prefix-mask" in choices and "none" not in choices
    assert len(set(choices)) == len(choices)


def test_the_constructor_signature_matches_resolve_config():
    import inspect

    from openrlhf_offpolicy.corrections import resolve_config

    ours = inspect.signature(PolicyLoss).parameters
    theirs = inspect.signature(resolve_config).parameters
    for name, param in theirs.items():
        if param.kind is param.KEYWORD_ONLY:
            assert name in ours, name
            default = ours[name].default
            assert default == param.default or list(default) == list(param.default), name


def test_help_lists_every_argument_with_its_valid_values(capsys):
    from openrlhf_offpolicy.corrections import POLICY_LOSSES, correction_choices, method_params

    PolicyLoss.help()
    text = capsys.readouterr().out
    for name in ("clip_eps_low", "is_correction_gating", "vllm_is_truncated_threshold", *method_params()):
        assert f"\n  {name} = " in text, name
    assert ", ".join(POLICY_LOSSES.names()) in text and ", ".join(correction_choices()) in text
    assert "one of off, token, seq" in text and "sech2, gaussian" in text
    assert "trm_divergence" in PolicyLoss.__doc__


def test_a_misspelled_argument_gets_a_did_you_mean():
    message = r"unknown PolicyLoss argument 'clip_eps_hgih'; did you mean 'clip_eps_high'\?"
    with pytest.raises(ValueError, match=message):
        PolicyLoss(clip_eps_hgih=0.28)
    with pytest.raises(ValueError, match=r"did you mean 'sapo_tau_pos'\?"):
        PolicyLoss(policy_loss_type="sapo", sapo_tau_po=2.0)


def test_an_unused_non_finite_rollout_log_prob_leaves_the_loss_equal_to_upstream():
    """Without a correction upstream's loss never reads pi_roll; a bad value there changes nothing."""
    from openrlhf.models.loss import PolicyLoss as UpstreamPolicyLoss

    inputs = random_inputs(batch=1, length=3, seed=3, min_len=3, dtype=torch.float32)
    inputs["rollout_log_probs"] = inputs["rollout_log_probs"].clone()
    inputs["rollout_log_probs"][0, 1] = float("nan")
    ours = PolicyLoss()(**inputs)[0]
    theirs = UpstreamPolicyLoss()(**inputs)[0]
    assert torch.equal(ours, theirs)


def test_an_empty_sequence_is_not_a_filtered_unit_deliberately_unlike_upstream():
    """Upstream 0.11.2 counts a row without action tokens as filtered at sequence level (its
    statistic is 0/0 = NaN); we count sequences that have tokens. One kept row + one empty row:
    upstream 0.5, ours 0.0."""
    from openrlhf.models.loss import PolicyLoss as UpstreamPolicyLoss

    inputs = random_inputs(batch=2, length=4, seed=4, min_len=4, mismatch_scale=0.0, dtype=torch.float32)
    inputs["action_mask"] = inputs["action_mask"].clone()
    inputs["action_mask"][1] = 0
    kwargs = dict(is_correction_level="seq", is_correction_mode="mask")
    assert UpstreamPolicyLoss(**kwargs)(**inputs)[4].item() == 0.5
    assert PolicyLoss(**kwargs)(**inputs)[4].item() == 0.0


# --------------------------------------------------------------------------- one configuration value
def test_a_resolved_config_builds_the_same_loss_as_its_keywords():
    import inspect

    from openrlhf_offpolicy.corrections import resolve_config

    kw = dict(policy_loss_type="sapo", enable_vllm_is_correction=True, vllm_is_correction_type="trm",
              trm_max_delta=0.02, rejection=("token_k1:-2:2",))
    inputs = random_inputs(seed=3)
    by_keywords = PolicyLoss(**kw)(**inputs)[0]
    config = resolve_config(**kw)
    by_config = PolicyLoss(config=config)
    assert by_config.config is config
    assert torch.equal(by_config(**inputs)[0], by_keywords)
    # one signature: PolicyLoss's is resolve_config's (names, kinds and defaults), plus config=
    ours = dict(inspect.signature(PolicyLoss).parameters)
    assert ours.pop("config").default is None
    assert list(ours.values()) == list(inspect.signature(resolve_config).parameters.values())


def test_a_config_that_resolve_config_did_not_return_or_config_with_keywords_is_refused():
    from openrlhf_offpolicy.corrections import OffPolicyConfig, resolve_config

    with pytest.raises(ValueError, match="resolve_config"):
        PolicyLoss(config=OffPolicyConfig(policy_loss_type="sapo"))
    with pytest.raises(ValueError, match="not both"):
        PolicyLoss(policy_loss_type="ppo", config=resolve_config())
