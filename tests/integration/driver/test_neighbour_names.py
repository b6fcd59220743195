"""verl's rollout-correction names and upstream's is_correction_* flags: mapped to ours with one
note, or refused with one line naming ours; no combination contradicts the message before it."""

import math
import os

import pytest
from helpers import MINIMAL_UPSTREAM_ARGV, dry_run, random_inputs

from openrlhf_offpolicy.corrections import correction_choices
from openrlhf_offpolicy.integration.driver import neighbour_names
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def resolved(argv, capsys):
    status, out = dry_run(MINIMAL_UPSTREAM_ARGV + argv, capsys)
    assert status == 0, out
    return out["offpolicy"]["policy_loss"]


@pytest.mark.parametrize("verl,correction,threshold", [
    (["--rollout_is", "token", "--rollout_is_threshold", "2.0"], "tis", [0.0, 2.0]),
    (["--rollout_is", "token", "--rollout_is_threshold", "0.5_5.0"], "icepop", [0.5, 5.0]),
    (["--rollout_is", "sequence"], "seq-tis", [0.0, 2.0]),  # verl's default threshold 2.0
    (["--algorithm.rollout_correction.rollout_is=sequence",
      "--algorithm.rollout_correction.rollout_is_threshold=0.5_2.0"], "seq-mis", [0.5, 2.0]),
])
def test_verl_rollout_is_maps_to_our_correction(verl, correction, threshold, capsys):
    loss = resolved(verl, capsys)
    assert loss["correction"] == correction and loss["threshold"] == threshold


def test_verl_batch_normalize_rejection_and_bypass_map_to_our_flags(capsys):
    from openrlhf_offpolicy.cli.train_ppo_ray import main

    argv = MINIMAL_UPSTREAM_ARGV + ["--rollout_rs", "seq_mean_k3,token_k2", "--rollout_rs_threshold", "0.01",
                                    "--rollout_is_batch_normalize", "--rollout_is", "token", "--dry_run"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "verl's" in line]
    assert len(notes) == 1 and "--rejection seq_mean_k3:0.01 token_k2:0.01" in notes[0]
    loss = resolved(["--rollout_rs", "seq_mean_k3,token_k2", "--rollout_rs_threshold", "0.01",
                     "--rollout_is_batch_normalize", "--rollout_is", "token"], capsys)
    assert loss["rejection"] == ["seq_mean_k3:0.01", "token_k2:0.01"] and loss["is_batch_normalize"] is True
    status, out = dry_run(MINIMAL_UPSTREAM_ARGV + ["--bypass_mode", "true"], capsys)
    assert status == 0 and out["offpolicy"]["settings"]["bypass_old_logprobs"] is True


@pytest.mark.parametrize("mode,spec", [("seq_mean_k1", "0.98_1.05"), ("token_k1", "0.7_1.2"),
                                       ("seq_sum_k1", "1.3")])
def test_a_verl_k1_band_rejects_what_verls_rule_rejects(mode, spec):
    """verl keeps -log r inside [log L, log U] (one value U: L = 1/U); reference in float64."""
    from openrlhf_offpolicy.models import PolicyLoss

    [criterion] = neighbour_names.rejection_criteria(mode, spec, ValueError)
    x = random_inputs(batch=64, length=12, seed=3, mismatch_scale=(0.0, 0.4))
    loss = PolicyLoss(rejection=[criterion])
    loss(x["log_probs"], x["old_log_probs"], x["advantages"], action_mask=x["action_mask"],
         rollout_log_probs=x["rollout_log_probs"])
    low, high = (float(v) for v in spec.split("_")) if "_" in spec else (1 / float(spec), float(spec))
    neg_log_r = -(x["old_log_probs"] - x["rollout_log_probs"]).double() * x["action_mask"]
    mask = x["action_mask"].bool()
    if mode == "token_k1":
        kept = (neg_log_r >= math.log(low)) & (neg_log_r <= math.log(high))
        expected = ((~kept) & mask).sum() / mask.sum()
    else:
        stat = neg_log_r.sum(-1) if mode == "seq_sum_k1" else neg_log_r.sum(-1) / mask.sum(-1)
        expected = (~((stat >= math.log(low)) & (stat <= math.log(high)))).double().mean()
    got = loss.metrics[f"rejection/{criterion}/masked_frac"]
    assert 0 < float(expected) < 1
    assert got == pytest.approx(float(expected), abs=1e-12)


@pytest.mark.parametrize("alias,ours", sorted(neighbour_names.CORRECTION_ALIASES.items()))
def test_every_correction_alias_resolves_to_a_registered_correction(alias, ours, capsys):
    assert ours in correction_choices() and alias not in correction_choices()
    band = ["--vllm_is_truncated_threshold", "0.05"] if ours.endswith(("kl-mask", "tv-mask")) else []
    loss = resolved(["--enable_vllm_is_correction", "--vllm_is_correction_type", alias, *band], capsys)
    assert loss["correction"] == resolved(["--enable_vllm_is_correction", "--vllm_is_correction_type", ours, *band],
                                          capsys)["correction"]


@pytest.mark.parametrize("value", sorted(neighbour_names.CORRECTION_REFUSALS))
def test_a_verl_option_name_as_a_correction_is_one_line_naming_ours(value, capsys):
    status, err = dry_run(MINIMAL_UPSTREAM_ARGV + ["--enable_vllm_is_correction", "--vllm_is_correction_type", value],
                          capsys)
    assert status == 2 and err.count("\n") == 1 and "--vllm_is_correction_type" in err
    assert any(name in err for name in correction_choices() + ["--rejection"])


UPSTREAM_TOKEN = ["--algo.advantage.is_correction_level", "token"]  # upstream's icepop [0.5, 5]


@pytest.mark.parametrize("ours", ["icepop", "tis", "trm"])
def test_upstream_is_correction_with_our_type_never_dead_ends(ours, capsys):
    """Follow each message's first suggestion, then its second: both resolve, nothing contradicts."""
    status, err = dry_run(MINIMAL_UPSTREAM_ARGV + UPSTREAM_TOKEN + ["--vllm_is_correction_type", ours], capsys)
    assert status == 2 and err.count("\n") == 1 and "has no effect" not in err
    assert "drop --vllm_is_correction_type" in err and "add --enable_vllm_is_correction" in err
    # way 1: upstream's flags only
    assert resolved(UPSTREAM_TOKEN, capsys)["correction"] == "icepop"
    # way 2: ours only
    assert resolved(["--enable_vllm_is_correction", "--vllm_is_correction_type", ours], capsys)["correction"] == ours
    # half of way 2 (switch added, upstream's flags kept): same correction resolves, another is refused saying so
    status, out = dry_run(MINIMAL_UPSTREAM_ARGV + UPSTREAM_TOKEN + ["--enable_vllm_is_correction",
                                                                    "--vllm_is_correction_type", ours], capsys)
    if ours == "icepop":
        assert status == 0
    else:
        assert status == 2 and "keep one of the two" in out


def test_every_neighbour_name_is_listed_in_the_migration_guide():
    readme = open(os.path.join(REPO, "docs", "migrating.md")).read()
    for name in list(neighbour_names.CORRECTION_ALIASES) + [f[2:] for f in neighbour_names.VERL_FLAGS]:
        assert f"`{name}`" in readme, name
