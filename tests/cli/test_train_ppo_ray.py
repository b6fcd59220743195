"""The CLI: upstream's parser through --dry_run, presets, example scripts, and the bad-input matrix."""

import glob
import os
import subprocess
import sys
import time

import pytest
import yaml
from helpers import MINIMAL_UPSTREAM_ARGV, dry_run

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PRESETS = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "examples", "scripts", "train_*.sh")))


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # presets and the reward file are given relative to the repository


def test_dry_run_resolves_upstream_and_our_flags(capsys):
    status, out = dry_run(MINIMAL_UPSTREAM_ARGV + [
        "--policy_loss_type", "sapo", "--sapo_tau_neg", "2.0", "--enable_vllm_is_correction",
        "--vllm_is_correction_type", "geo-mask", "--vllm_is_truncated_threshold", "0.99", "1.01",
        "--actor.eps_clip_low_high", "0.2", "0.28", "--rollout.batch_size", "64"], capsys)
    assert status == 0, out
    up, loss = out["upstream"], out["offpolicy"]["policy_loss"]
    assert up["actor.policy_loss_type"] == "sapo" and up["rollout.batch_size"] == 64
    assert up["actor.eps_clip_low_high"] == [0.2, 0.28]
    assert up["logger.wandb.group"] == "sapo-geo-mask" and up["logger.wandb.run_name"].startswith("sapo-geo-mask_")
    assert loss["correction"] == "geo-mask" and loss["threshold"] == [0.99, 1.01] and loss["sapo_tau_neg"] == 2.0
    assert loss["clip_eps_high"] == 0.28
    assert out["offpolicy"]["settings"]["request_rollout_logprobs"] is True


def test_rejection_and_batch_normalize_reach_the_policy_loss(capsys):
    status, out = dry_run(MINIMAL_UPSTREAM_ARGV + [
        "--enable_vllm_is_correction", "--is_batch_normalize", "--rejection", "seq_max_k2:0.05", "veto:0.1"], capsys)
    assert status == 0, out
    loss = out["offpolicy"]["policy_loss"]
    assert loss["rejection"] == ["seq_max_k2:0.05", "veto:0.1"] and loss["is_batch_normalize"] is True
    assert out["offpolicy"]["settings"]["loss_kwargs"]["rejection"] == ["seq_max_k2:0.05", "veto:0.1"]


def test_explicit_wandb_names_are_kept(capsys):
    status, out = dry_run(MINIMAL_UPSTREAM_ARGV + ["--logger.wandb.group", "mine", "--logger.wandb.run_name", "r1"],
                          capsys)
    assert status == 0 and out["upstream"]["logger.wandb.group"] == "mine"
    assert out["upstream"]["logger.wandb.run_name"] == "r1"


def test_no_mismatch_metrics_requests_rollout_logprobs_only_when_needed(capsys):
    _, plain = dry_run(MINIMAL_UPSTREAM_ARGV + ["--no_mismatch_metrics"], capsys)
    _, corrected = dry_run(MINIMAL_UPSTREAM_ARGV + ["--no_mismatch_metrics", "--enable_vllm_is_correction"], capsys)
    assert plain["offpolicy"]["settings"]["request_rollout_logprobs"] is False
    assert corrected["offpolicy"]["settings"]["request_rollout_logprobs"] is True


def test_command_line_flags_override_the_preset(capsys, tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("policy_loss_type: sapo\nsapo_tau_pos: 0.5\nrollout.batch_size: 32\n")
    status, out = dry_run(["--config", str(preset), "--sapo_tau_pos", "0.7", *MINIMAL_UPSTREAM_ARGV], capsys)
    assert status == 0
    assert out["offpolicy"]["policy_loss"]["sapo_tau_pos"] == 0.7
    assert out["upstream"]["rollout.batch_size"] == 32


@pytest.mark.parametrize("preset", PRESETS, ids=os.path.basename)
def test_every_preset_parses_through_upstreams_parser_with_its_values(preset, capsys):
    status, out = dry_run(MINIMAL_UPSTREAM_ARGV + ["--config", os.path.relpath(preset, REPO)], capsys)
    assert status == 0, out
    up, loss = out["upstream"], out["offpolicy"]["policy_loss"]
    with open(preset) as f:
        values = yaml.safe_load(f)
    assert open(preset).readline().startswith("# "), "every preset starts with a comment naming its source"
    for key, value in values.items():
        if key in up:
            assert up[key] == value, key
        elif key == "vllm_is_correction_type":
            assert loss["correction"] == {"prefix-mask": "reinforce_pro"}.get(value, value)
        elif key == "vllm_is_truncated_threshold":
            assert loss["threshold"] == value
        elif key == "enable_vllm_is_correction":
            assert (loss["correction"] != "none") == value
        elif key == "vllm_logprobs_topk":
            assert out["offpolicy"]["settings"]["logprobs_topk"] == value
        else:
            assert loss[key] == value, key


def script_argv(script, **env):
    result = subprocess.run(["bash", script], env={**os.environ, "PRINT_ARGV": "1", **env}, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


FAMILY_VARIANTS = {
    "train_token_is.sh": ("CORRECTION", ["tis", "icepop"]),
    "train_sequence_is.sh": ("CORRECTION", ["geo-mask", "seq-mask-tis", "seq-tis", "seq-mis", "reinforce_pro"]),
    "train_trm.sh": ("CORRECTION", ["trm", "trm_avg", "trm_combined", "trm_topk"]),
    "train_gspo.sh": ("LOSS", ["gspo", "gspo_token"]),
    "train_soft_gate.sh": ("LOSS", ["sapo", "is_reshape"]),
    "train_cispo.sh": ("LOSS", ["cispo"]),
    "train_dppo.sh": ("LOSS", ["dppo", "dppo_kl", "dppo_topk"]),
    "train_baseline.sh": (None, [None]),
}


def test_every_script_is_covered_and_every_preset_has_a_script():
    assert {os.path.basename(s) for s in SCRIPTS} == set(FAMILY_VARIANTS)
    variants = {v.replace("-", "_") for _, vs in FAMILY_VARIANTS.values() for v in vs if v} | {"baseline"}
    assert variants == {os.path.basename(p)[:-5] for p in PRESETS}


@pytest.mark.parametrize("script,variable,variant", [
    (s, var, v) for s, (var, vs) in FAMILY_VARIANTS.items() for v in vs])
def test_every_example_script_parses_through_upstreams_parser(script, variable, variant, capsys):
    env = {variable: variant} if variable else {}
    argv = script_argv(os.path.join(REPO, "examples", "scripts", script), **env)
    status, out = dry_run(argv, capsys)
    assert status == 0, out
    up, loss = out["upstream"], out["offpolicy"]["policy_loss"]
    assert up["actor.model_name_or_path"] == "Qwen/Qwen2.5-Math-1.5B"
    assert up["vllm.num_engines"] == 8 and up["train.colocate_all"] is True
    assert up["algo.advantage.estimator"] == "group_norm" and up["rollout.n_samples_per_prompt"] == 8
    assert up["reward.remote_url"] == ["examples/scripts/reward_math.py"]
    name = (variant or "baseline").replace("_avg", "").replace("_combined", "").replace("_kl", "").replace("_topk", "")
    assert name in (loss["correction"], loss["policy_loss_type"]) or name == "baseline"
    assert up["logger.wandb.group"].startswith(loss["policy_loss_type"])


def test_an_example_script_runs_end_to_end_in_dry_run_mode():
    result = subprocess.run(["bash", "examples/scripts/train_trm.sh", "--train.num_episodes", "3"],
                            env={**os.environ, "DRY_RUN": "1", "CORRECTION": "trm_combined", "PYTHON": sys.executable,
                                 "PYTHONPATH": os.path.join(REPO, "tests", "stubs")},
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"trm_avg_delta": 0.002' in result.stdout and '"train.num_episodes": 3' in result.stdout


BAD_INPUT = [
    (["--policy_loss_type", "grpo"], "invalid choice: 'grpo'"),
    (["--enable_vllm_is_correction", "--vllm_is_correction_type", "mis"], "invalid choice: 'mis'"),
    (["--vllm_is_correction_type", "icepop"], "has no effect without --enable_vllm_is_correction"),
    (["--policy_loss_type", "sapo", "--actor.policy_loss_type", "gspo"], "contradicts --actor.policy_loss_type"),
    (["--enable_vllm_is_correction", "--algo.advantage.is_correction_level", "seq"], "conflicting correction"),
    (["--policy_loss_type", "dppo", "--enable_vllm_is_correction"], "applies the mismatch twice"),
    (["--enable_vllm_is_correction", "--vllm_is_truncated_threshold", "2.0", "1.0"], "0 <= low <= 1 <= high"),
    (["--enable_vllm_is_correction", "--vllm_is_truncated_threshold", "1.5", "3.0"], "0 <= low <= 1 <= high"),
    (["--enable_vllm_is_correction", "--vllm_is_correction_type", "tv-mask"], "upper bound only"),
    (["--enable_vllm_is_correction", "--vllm.num_engines", "0"], "vLLM is off"),
    (["--policy_loss_type", "gspo", "--enable_vllm_is_correction", "--vllm_is_correction_type", "trm"],
     "use policy_loss_type='gspo_token'"),
    (["--rejection", "seq_max_k1:0.1"], "seq_max takes k2 or k3 only"),
    (["--rejection", "token_k2:0.1", "--vllm.num_engines", "0"], "--rejection token_k2:0.1 needs the rollout"),
    (["--is_batch_normalize"], "no correction is selected"),
    (["--sapo_tau_pos", "0"], "sapo_tau_pos=0.0: must be > 0"),
    (["--trm_max_delta", "-1"], "trm_max_delta=-1.0: must be > 0"),
    (["--enable_vllm_is_correction", "--vllm_is_correction_type", "trm", "--trm_max_delta", "none"],
     "trm_max_delta or trm_avg_delta"),
    (["--dppo_divergence", "k2"], "invalid choice: 'k2'"),
    (["--is_reshape_gamma", "2"], "is_reshape_gamma=2.0: must lie in [0, 1]"),
    (["--cispo_clip_range", "1.5", "2"], "must contain 1"),
    (["--config", "configs/missing.yaml"], "No such file or directory"),
    (["--config"], "--config needs a FILE.yaml"),
    (["--vllm_logprobs_topk", "21"], "must lie in 1..20"),
    (["--vllm_logprobs_topk", "-1"], "must lie in 1..20"),
    (["--policy_loss_type", "dppo", "--dppo_divergence", "topk_kl"], "add --vllm_logprobs_topk K"),
    (["--vllm_logprobs_topk", "4", "--train.agent_func_path", "agent.py"], "multi-turn agent rollouts"),
    (["--vllm_logprobs_topk", "4", "--ds.ring_attn_size", "2"], "ring attention"),
    (["--vllm_logprobs_topk", "4", "--vllm.num_engines", "0"], "vLLM is off"),
    (["--enable_vllm_is_correction", "--vllm_is_correction_type", "trm", "--trm_divergence", "topk_kl",
      "--vllm_logprobs_topk", "4"], "set trm_reference=current"),
]


@pytest.mark.parametrize("argv,message", BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_bad_input_exits_2_with_a_one_line_reason_in_under_5_seconds(argv, message):
    base = [a for a in MINIMAL_UPSTREAM_ARGV]
    if "--vllm.num_engines" in argv:
        i = base.index("--vllm.num_engines")
        del base[i:i + 2]
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "openrlhf_offpolicy.cli.train_ppo_ray", *base, *argv],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert result.returncode == 2, (result.stdout[-500:], result.stderr[-1500:])
    lines = [line for line in result.stderr.splitlines() if line.startswith("train_ppo_ray: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-1500:]
    assert elapsed < 5.0, f"took {elapsed:.1f}s"


def test_an_upstream_argument_check_is_reported_in_one_line(capsys):
    # upstream asserts that group_norm needs more than one sample per prompt
    argv = [a if a != "4" else "1" for a in MINIMAL_UPSTREAM_ARGV]
    status, err = dry_run(argv, capsys)
    assert status == 2 and "upstream train_ppo_ray rejected the arguments" in err
    assert "n_samples_per_prompt > 1" in err


def test_help_lists_our_flags_and_upstreams():
    result = subprocess.run([sys.executable, "-m", "openrlhf_offpolicy.cli.train_ppo_ray", "--help"],
                            cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": os.path.join(REPO, "tests", "stubs")})
    assert result.returncode == 0, result.stderr[-2000:]
    for flag in ("--vllm_is_correction_type", "--trm_max_delta", "--is_reshape_kernel", "--dry_run",
                 "--actor.model_name_or_path", "--algo.advantage.is_correction_level"):
        assert flag in result.stdout
