"""16k-token rows with a large rollout/training mismatch: no method turns the loss, its gradient or
a metric into NaN/Inf. Sequence-level exponents (a product of 16k ratios is exp(+-thousands)) are
clamped everywhere, GSPO's included (OpenRLHF #1293); the binary KL is clamped at >= 0 before
thresholds and metrics (OpenRLHF #1354)."""

import math

import pytest
import torch

from openrlhf_offpolicy.corrections import CORRECTIONS, NO_CORRECTION, POLICY_LOSSES
from openrlhf_offpolicy.models import PolicyLoss

LENGTH = 16384


def long_inputs(seed=0):
    """Two float32 rows of 16k action tokens: one single-turn, one with tool-output holes (many turns);
    pi_old drifts from pi_theta by ~1 nat and pi_roll from pi_old by ~3 nats per token."""
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(2, LENGTH, generator=g) * 8 - 0.01
    old = (lp + torch.randn(2, LENGTH, generator=g)).clamp(max=-1e-4)
    roll = (old + 3 * torch.randn(2, LENGTH, generator=g)).clamp(max=-1e-4)
    mask = torch.ones(2, LENGTH)
    mask[1, torch.rand(LENGTH, generator=g) < 0.05] = 0
    advantages = torch.sign(torch.randn(2, 1, generator=g)).expand(2, LENGTH).clone()
    return dict(log_probs=lp.requires_grad_(), old_log_probs=old, advantages=advantages, action_mask=mask,
                rollout_log_probs=roll)


def band(correction):
    return (0.0, 0.05) if CORRECTIONS.get(correction).threshold == "divergence" else (0.5, 5.0)


def settings():
    out = [(f"loss:{name}", dict(policy_loss_type=name)) for name in POLICY_LOSSES.names()]
    out += [(f"ppo+{name}", dict(enable_vllm_is_correction=True, vllm_is_correction_type=name,
                                 vllm_is_truncated_threshold=band(name)))
            for name in CORRECTIONS.names(hidden=False) if name != NO_CORRECTION]
    out += [
        ("gspo anchored on pi_roll", dict(policy_loss_type="gspo", enable_vllm_is_correction=True,
                                          vllm_is_correction_type="tis")),
        ("gspo_token+seq-tis", dict(policy_loss_type="gspo_token", enable_vllm_is_correction=True,
                                    vllm_is_correction_type="seq-tis")),
        ("a3po versions", dict(policy_loss_type="a3po", a3po_alpha="versions")),
        ("rejection", dict(rejection=["seq_sum_k1:-1:1", "seq_max_k3:5", "segment_sum_k2:3", "segment_mean_k1:0.5",
                                      "token_kpop:0.5", "veto:0.01", "opsm:0.1", "m2po:0.04"])),
        ("seq-mis normalised", dict(enable_vllm_is_correction=True, vllm_is_correction_type="seq-mis",
                                    vllm_is_truncated_threshold=(0.0, 1e30), is_batch_normalize=True)),
    ]
    return out


# Both aggregations, alternating over the settings (the loss's own aggregation for sequence-level ones).
SETTINGS = [(name, {**kwargs, "token_level_loss": i % 2 == 0}) for i, (name, kwargs) in enumerate(settings())]


@pytest.mark.parametrize("name,kwargs", SETTINGS, ids=[n for n, _ in SETTINGS])
def test_long_rows_with_large_mismatch_give_finite_loss_gradient_and_metrics(name, kwargs):
    inputs = long_inputs()
    if kwargs.get("a3po_alpha") == "versions":
        inputs["policy_version_lag"] = torch.tensor([1, 40])
    module = PolicyLoss(**kwargs)
    loss = module(**inputs)[0]
    loss.backward()
    assert torch.isfinite(loss), name
    assert torch.isfinite(inputs["log_probs"].grad).all(), name
    bad = {k: v.item() for k, v in module.metrics.items() if not math.isfinite(v.item())}
    assert not bad, f"{name}: non-finite metrics {bad}"
    for key, stat in module.statistics.items():
        assert all(math.isfinite(float(p)) or key.endswith("max") for p in stat.parts().values()), key


def test_a_16k_row_sequence_ratio_saturates_instead_of_overflowing():
    """exp(sum of 16k log-ratios) would be inf: seq-tis clamps it to the band, GSPO's mean stays finite."""
    inputs = long_inputs(1)
    module = PolicyLoss(enable_vllm_is_correction=True, vllm_is_correction_type="seq-tis",
                        vllm_is_truncated_threshold=(0.5, 2.0))
    module(**inputs)[0].backward()
    assert module.metrics["is/weight_max"].item() in (0.5, 2.0)
    assert torch.isfinite(inputs["log_probs"].grad).all()
