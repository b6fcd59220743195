"""--config files: stacked files merge (a key set twice must agree unless the command line sets it),
every error names the file a value came from, an empty file is refused, key hints use 0.11.2 names."""

import os

import pytest
from helpers import MINIMAL_UPSTREAM_ARGV, dry_run

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_two_files_setting_a_key_differently_is_one_line_naming_both(capsys):
    status, err = dry_run(
        MINIMAL_UPSTREAM_ARGV + ["--config", "configs/gspo_token.yaml", "--config", "configs/trm.yaml"], capsys)
    assert status == 2 and err.count("\n") == 1
    assert "configs/gspo_token.yaml" in err and "configs/trm.yaml" in err and "on the command line" in err


def test_the_command_line_settles_a_conflict_between_files(capsys):
    status, out = dry_run(MINIMAL_UPSTREAM_ARGV + [
        "--config", "configs/gspo_token.yaml", "--config", "configs/trm.yaml",
        "--vllm_is_correction_type", "trm", "--actor.eps_clip_low_high", "3e-4", "4e-4"], capsys)
    assert status == 0, out
    loss = out["offpolicy"]["policy_loss"]
    assert loss["policy_loss_type"] == "gspo_token" and loss["correction"] == "trm"
    assert (loss["clip_eps_low"], loss["clip_eps_high"]) == (3e-4, 4e-4)


def test_files_that_agree_stack(capsys):
    status, out = dry_run(MINIMAL_UPSTREAM_ARGV + ["--config", "configs/tis.yaml", "--config", "configs/tis.yaml"],
                          capsys)
    assert status == 0 and out["offpolicy"]["policy_loss"]["correction"] == "tis"


def test_an_error_about_a_flag_from_a_file_names_the_file(capsys):
    status, err = dry_run(MINIMAL_UPSTREAM_ARGV + ["--config", "configs/sapo.yaml", "--config", "configs/tis.yaml"],
                          capsys)
    assert status == 2 and err.count("\n") == 1
    assert "--actor.eps_clip_low_high is set by --config configs/tis.yaml" in err


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_an_empty_file_is_refused(text, tmp_path, capsys):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    status, err = dry_run(MINIMAL_UPSTREAM_ARGV + ["--config", str(path)], capsys)
    assert status == 2 and err.count("\n") == 1 and "sets nothing" in err and str(path) in err


def test_an_unknown_key_suggests_a_0_11_2_name(tmp_path, capsys):
    path = tmp_path / "k.yaml"
    path.write_text("actor.micro_train_batch_size: 2\n")
    status, err = dry_run(MINIMAL_UPSTREAM_ARGV + ["--config", str(path)], capsys)
    assert status == 2 and "did you mean train.micro_batch_size?" in err


def test_verl_keys_in_a_file_are_translated(tmp_path, capsys):
    path = tmp_path / "verl.yaml"
    path.write_text("algorithm.rollout_correction.rollout_is: token\nrollout_is_threshold: 0.5_5.0\n")
    status, out = dry_run(MINIMAL_UPSTREAM_ARGV + ["--config", str(path)], capsys)
    assert status == 0, out
    assert out["offpolicy"]["policy_loss"]["correction"] == "icepop"


def test_a_registered_preset_path_outside_the_checkout_reads_the_packaged_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out = dry_run(MINIMAL_UPSTREAM_ARGV + ["--config", "configs/trm.yaml"], capsys)
    assert status == 0, out
    assert out["offpolicy"]["policy_loss"]["correction"] == "trm"


def test_a_preset_file_in_the_working_directory_wins_over_the_packaged_one(tmp_path, monkeypatch, capsys):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "trm.yaml").write_text("enable_vllm_is_correction: true\nvllm_is_correction_type: tis\n")
    monkeypatch.chdir(tmp_path)
    status, out = dry_run(MINIMAL_UPSTREAM_ARGV + ["--config", "configs/trm.yaml"], capsys)
    assert status == 0, out
    assert out["offpolicy"]["policy_loss"]["correction"] == "tis"


def test_an_unknown_preset_outside_the_checkout_is_named_as_typed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, err = dry_run(MINIMAL_UPSTREAM_ARGV + ["--config", "configs/nosuch.yaml"], capsys)
    assert status == 2 and "--config configs/nosuch.yaml: No such file" in err
