"""Bad input fails at construction with a clear ValueError; good input resolves as documented."""

import pytest

from openrlhf_offpolicy.corrections import CORRECTIONS, resolve_config
from openrlhf_offpolicy.corrections.config import UPSTREAM_GATES, correction_choices

BAD_KWARGS = [
    (dict(policy_loss_type="grpo"), "unknown policy loss 'grpo'"),
    (dict(enable_vllm_is_correction=True, vllm_is_correction_type="mis"), "unknown vllm_is_correction_type 'mis'"),
    (dict(enable_vllm_is_correction=True, vllm_is_correction_type="none"), "unknown vllm_is_correction_type"),
    (dict(is_correction_level="sequence"), "is_correction_level must be off/token/seq"),
    (dict(is_correction_level="token", is_correction_mode="drop"), "is_correction_mode must be mask/clip"),
    (dict(is_correction_level="token", is_correction_gating="kl"), "is_correction_gating must be ratio/binary_kl/tv"),
    (dict(is_correction_level="seq", is_correction_mode="clip"), "clip requires is_correction_level=token"),
    (dict(is_correction_level="token", is_correction_gating="tv", is_correction_threshold=(0.5, 5.0)),
     "upper bound only"),
    (dict(enable_vllm_is_correction=True, vllm_is_truncated_threshold=(5.0, 0.5)), "5 0.5 is inverted"),
    # an inverted band, a correction type or a method parameter that the configuration would ignore
    (dict(vllm_is_truncated_threshold=(2.0, 1.0)), "vllm_is_truncated_threshold 2 1 is inverted"),
    (dict(is_correction_threshold=(3.0, 1.0)), "is_correction_threshold 3 1 is inverted"),
    (dict(vllm_is_correction_type="icepop"), "has no effect without enable_vllm_is_correction=True"),
    (dict(policy_loss_type="ppo", sapo_tau_pos=2.0), "sapo_tau_pos is read only by the policy loss sapo"),
    (dict(trm_max_delta=0.1), "trm_max_delta is read only by the correction trm"),
    (dict(enable_vllm_is_correction=True, vllm_is_truncated_threshold=(1.2, 5.0)), "0 <= low <= 1 <= high"),
    (dict(enable_vllm_is_correction=True, vllm_is_truncated_threshold=(-0.1, 5.0)), "0 <= low <= 1 <= high"),
    (dict(enable_vllm_is_correction=True, vllm_is_truncated_threshold=(1.0, 1.0)), "low < high"),
    (dict(enable_vllm_is_correction=True, vllm_is_truncated_threshold=(0.5, 1.0, 2.0)), "LOW HIGH"),
    (dict(enable_vllm_is_correction=True, vllm_is_correction_type="tis", is_correction_level="token",
          is_correction_mode="mask"), "conflicting correction settings"),
    (dict(enable_vllm_is_correction=True, vllm_is_truncated_threshold=(0.5, 2.0), is_correction_level="token",
          is_correction_mode="clip"), "conflicting correction settings"),
    (dict(policy_loss_type="dppo", enable_vllm_is_correction=True), "applies the mismatch twice"),
    (dict(policy_loss_type="dppo", is_correction_level="token"), "applies the mismatch twice"),
    (dict(policy_loss_type="gspo", enable_vllm_is_correction=True, vllm_is_correction_type="geo-mask"),
     "gspo_token"),
    (dict(dual_clip=1.0), "dual_clip must be > 1.0"),
    (dict(clip_eps_low=1.0), "clip_eps_low"),
    (dict(clip_eps_high=-0.1), "clip_eps_high"),
    (dict(sapo_tau_pos=0.0), "sapo_tau_pos=0.0: must be > 0"),
    (dict(sapo_tau_neg=-1.0), "sapo_tau_neg"),
    (dict(cispo_clip_range=(1.5, 5.0)), "must contain 1"),
    (dict(cispo_clip_range=(0.5,)), "cispo_clip_range must be 2 numbers"),
    (dict(dppo_divergence="k2"), "dppo_divergence='k2' is not one of"),
    (dict(dppo_delta=0.0), "dppo_delta=0.0: must be > 0"),
    (dict(dppo_ratio_cap=0.5), "dppo_ratio_cap"),
    (dict(trm_max_delta=-0.05), "trm_max_delta"),
    (dict(trm_avg_delta=0.0), "trm_avg_delta"),
    (dict(trm_divergence="binary_tv"), "trm_divergence='binary_tv' is not one of"),
    (dict(trm_reference="older"), "trm_reference"),
    (dict(enable_vllm_is_correction=True, vllm_is_correction_type="trm", trm_max_delta=None), "trm_max_delta or"),
    (dict(is_reshape_kernel="box"), "is_reshape_kernel='box'"),
    (dict(is_reshape_width=0.0), "is_reshape_width"),
    (dict(is_reshape_gamma=1.5), "is_reshape_gamma=1.5: must lie in [0, 1]"),
    (dict(is_reshape_gamma_mode="adaptive"), "is_reshape_gamma_mode"),
    (dict(is_reshape_temp=0.0), "is_reshape_temp"),
    (dict(sapo_tau=1.0), "unknown PolicyLoss argument(s) ['sapo_tau']"),
    (dict(trm_max_delta="wide"), "trm_max_delta must be a float"),
]


@pytest.mark.parametrize("kwargs,message", BAD_KWARGS, ids=[m for _, m in BAD_KWARGS])
def test_bad_kwargs_raise_a_value_error_naming_the_problem(kwargs, message):
    with pytest.raises(ValueError) as info:
        resolve_config(**kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize("gate,name", sorted(UPSTREAM_GATES.items()))
def test_upstream_gates_resolve_to_the_registered_correction_they_equal(gate, name):
    level, mode, gating = gate
    threshold = (0.5, 5.0) if gating == "ratio" else (0.0, 0.02)
    cfg = resolve_config(is_correction_level=level, is_correction_mode=mode, is_correction_gating=gating,
                         is_correction_threshold=threshold)
    assert cfg.correction == name and cfg.threshold == threshold


def test_both_apis_may_be_given_when_they_agree():
    cfg = resolve_config(is_correction_level="seq", is_correction_mode="mask", enable_vllm_is_correction=True,
                         vllm_is_correction_type="seq-mask-tis")
    assert cfg.correction == "seq-mask-tis"


def test_a_single_threshold_value_is_an_upper_bound():
    cfg = resolve_config(is_correction_level="token", is_correction_gating="binary_kl", is_correction_threshold=[0.01])
    assert cfg.threshold == (0.0, 0.01)


def test_prefix_mask_is_an_alias_of_reinforce_pro():
    cfg = resolve_config(enable_vllm_is_correction=True, vllm_is_correction_type="prefix-mask")
    assert cfg.correction == "reinforce_pro"
    assert "prefix-mask" in correction_choices() and "none" not in correction_choices()


def test_gspo_with_a_legacy_correction_anchors_on_the_rollout_policy_and_applies_no_coefficient():
    cfg = resolve_config(policy_loss_type="gspo", enable_vllm_is_correction=True, vllm_is_correction_type="icepop")
    assert cfg.anchor_on_rollout and not cfg.correction_enabled and cfg.needs_rollout_log_probs
    assert not cfg.token_level_loss


def test_sequence_level_losses_force_seq_mean_token_mean():
    assert not resolve_config(policy_loss_type="gspo_token", token_level_loss=True).token_level_loss
    assert resolve_config(policy_loss_type="sapo", token_level_loss=True).token_level_loss


def test_dppo_delta_defaults_to_the_divergence_default():
    from openrlhf_offpolicy.corrections.dppo import dppo_delta

    assert dppo_delta(resolve_config(policy_loss_type="dppo")) == 0.15
    assert dppo_delta(resolve_config(policy_loss_type="dppo", dppo_divergence="binary_kl")) == 0.05
    assert dppo_delta(resolve_config(policy_loss_type="dppo", dppo_delta=0.3)) == 0.3


def test_every_listed_correction_resolves_with_its_default_threshold():
    for name in correction_choices():
        entry = CORRECTIONS.get(name)
        threshold = (0.0, 0.05) if entry.threshold == "divergence" else (0.5, 5.0)
        cfg = resolve_config(enable_vllm_is_correction=True, vllm_is_correction_type=name,
                             vllm_is_truncated_threshold=threshold)
        assert cfg.correction == entry.name and cfg.needs_rollout_log_probs


def test_a_method_parameter_at_its_default_or_read_by_a_selected_method_is_accepted():
    """Callers (the CLI's settings among them) pass every method parameter; only a value the run would
    ignore is refused."""
    from openrlhf_offpolicy.corrections import method_params

    defaults = {name: p.default for name, p in method_params().items()}
    assert resolve_config(**defaults).policy_loss_type == "ppo"
    assert resolve_config(policy_loss_type="sapo", sapo_tau_pos=2.0).param("sapo_tau_pos") == 2.0
    cfg = resolve_config(enable_vllm_is_correction=True, vllm_is_correction_type="trm", trm_max_delta=0.1)
    assert cfg.param("trm_max_delta") == 0.1
