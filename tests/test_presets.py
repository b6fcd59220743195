"""Every registered method's preset builds the PolicyLoss of the method it belongs to."""

import pytest

from openrlhf_offpolicy.corrections import CORRECTIONS, POLICY_LOSSES
from openrlhf_offpolicy.models import PolicyLoss
from openrlhf_offpolicy.presets import preset_loss_kwargs, registered_presets

PRESETS = [(e.name, p) for e in list(POLICY_LOSSES) + list(CORRECTIONS) for p in (e.preset, *e.variants) if p]


@pytest.mark.parametrize("method,path", PRESETS, ids=[p for _, p in PRESETS])
def test_each_preset_selects_its_registered_method(method, path):
    config = PolicyLoss(**preset_loss_kwargs(path)).config
    assert method in (config.policy_loss_type, config.correction) or (method == "ppo" and not config.correction_enabled)


def test_registered_presets_cover_every_method_with_a_preset():
    presets = registered_presets()
    assert {"gmpo", "vespo", "luspo", "clip_cov", "kl_cov", "expert_iteration", "trm_avg", "tis"} <= set(presets)
    assert presets["vespo"]["vespo_k"] == [2.0, 3.0] and presets["tis"]["vllm_is_truncated_threshold"] == [0.0, 2.0]
