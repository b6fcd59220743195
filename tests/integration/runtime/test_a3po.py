"""A-3PO in the OpenRLHF integration: bypass mode on its own, and ``--a3po_alpha versions`` from the
policy versions the async path records, carried in ``experience.info`` to the loss of every micro-batch.
(The async two-rank end-to-end run belongs to the e2e suite.)"""

from types import SimpleNamespace

import pytest
import torch
from helpers import MINIMAL_UPSTREAM_ARGV, dry_run, random_inputs, resolved

from openrlhf_offpolicy.corrections.a3po import alpha_from_version_lag
from openrlhf_offpolicy.integration.runtime.loss import policy_loss_class
from openrlhf_offpolicy.integration.runtime.policy_versions import VERSION_LAG_KEY, with_staleness_filter
from openrlhf_offpolicy.integration.runtime.settings import OffPolicySettings
from openrlhf_offpolicy.integration.runtime.staleness import SampleVersion
from openrlhf_offpolicy.models import PolicyLoss


def test_alpha_is_one_minus_one_over_the_lag_and_zero_for_fresh_samples():
    lags = torch.tensor([-2, 0, 1, 2, 4, 10])
    # (v_prox - v_behave) / (v_theta - v_behave), v_prox = v_theta - 1, clamped to [0, 1]; 0 when v_theta <= v_behave
    expected = [0.0, 0.0, 0.0, 0.5, 0.75, 0.9]
    assert alpha_from_version_lag(lags).tolist() == pytest.approx(expected)


def test_alpha_versions_per_sample_equals_the_scalar_alpha_run_on_each_sample():
    inputs = random_inputs(batch=4, length=7, seed=3, policy_scale=0.3, mismatch_scale=0.3)
    lags = torch.tensor([0, 1, 2, 4])
    per_sample = PolicyLoss(policy_loss_type="a3po", a3po_alpha="versions", token_level_loss=False)
    loss = per_sample(**inputs, policy_version_lag=lags)[0]
    parts = []
    for b, alpha in enumerate(alpha_from_version_lag(lags).tolist()):
        one = {k: v[b:b + 1] for k, v in inputs.items()}
        parts.append(PolicyLoss(policy_loss_type="a3po", a3po_alpha=alpha, token_level_loss=False)(**one)[0])
    assert torch.allclose(loss, torch.stack(parts).mean())


def test_alpha_versions_without_the_lags_is_an_error():
    with pytest.raises(ValueError, match="policy_version_lag"):
        PolicyLoss(policy_loss_type="a3po", a3po_alpha="versions")(**random_inputs(seed=1))


def test_the_train_step_puts_each_samples_version_lag_into_its_info():
    samples = [SimpleNamespace(info={}, policy_version=SampleVersion(v, v)) for v in (7, 5, 9)]
    trainer = SimpleNamespace(args=SimpleNamespace(rollout=SimpleNamespace(n_samples_per_prompt=1, micro_batch_size=1),
                                                   train=SimpleNamespace(micro_batch_size=1),
                                                   actor=SimpleNamespace(num_nodes=1, num_gpus_per_node=1),
                                                   ds=SimpleNamespace(ring_attn_size=1, tensor_parallel_size=1)))
    seen = {}

    def train_step(self, kept, global_step):
        seen["lags"] = [s.info[VERSION_LAG_KEY].tolist() for s in kept]
        return {}, global_step + 1

    with_staleness_filter(train_step, None, tag_version_lag=True)(trainer, samples, 9)
    assert seen["lags"] == [[2.0], [4.0], [0.0]]
    untagged = [SimpleNamespace(info={}, policy_version=SampleVersion(3, 3))]
    with_staleness_filter(lambda self, kept, step: ({}, step + 1), None)(trainer, untagged, 9)
    assert VERSION_LAG_KEY not in untagged[0].info


def test_the_integrated_loss_reads_the_lags_of_its_micro_batch():
    settings = resolved(OffPolicySettings(loss_kwargs={"a3po_alpha": "versions"}, policy_loss_type="a3po"))
    assert settings.needs_version_lag
    loss_fn = policy_loss_class(settings)(policy_loss_type="a3po")
    inputs = random_inputs(batch=3, length=5, seed=2, policy_scale=0.3, mismatch_scale=0.3)
    loss_fn.experience_info = {VERSION_LAG_KEY: torch.tensor([0.0, 2.0, 4.0])}
    loss_fn(**inputs)
    assert loss_fn.metrics["a3po/alpha"].item() == pytest.approx(
        float((torch.tensor([0.0, 0.5, 0.75]).unsqueeze(1) * inputs["action_mask"]).sum()
              / inputs["action_mask"].sum()))


def test_a3po_runs_in_bypass_mode_and_parses_alpha_versions(capsys):
    status, out = dry_run(MINIMAL_UPSTREAM_ARGV + ["--policy_loss_type", "a3po", "--a3po_alpha", "versions"], capsys)
    assert status == 0, out
    assert out["offpolicy"]["settings"]["bypass_old_logprobs"] is True
    assert out["offpolicy"]["policy_loss"]["a3po_alpha"] == "versions"


@pytest.mark.parametrize("bad", [["--a3po_alpha", "1.5"], ["--a3po_alpha", "fresh"], ["--a3po_behave_cap", "1"],
                                 ["--enable_vllm_is_correction"]])
def test_bad_a3po_settings_exit_2(bad, capsys):
    status, err = dry_run(MINIMAL_UPSTREAM_ARGV + ["--policy_loss_type", "a3po", *bad], capsys)
    assert status == 2, err
