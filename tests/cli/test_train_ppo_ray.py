"""The CLI: upstream's parser through --dry_run, presets, example scripts, and the bad-input matrix."""

import glob
import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from helpers import MINIMAL_UPSTREAM_ARGV, cli_process, dry_run

from openrlhf_offpolicy.corrections import CORRECTIONS
from openrlhf_offpolicy.corrections.tables import launch_scripts

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
        "--rollout.batch_size", "64"], capsys)
    assert status == 0, out
    up, loss = out["upstream"], out["offpolicy"]["policy_loss"]
    assert up["actor.policy_loss_type"] == "sapo" and up["rollout.batch_size"] == 64
    label = "sapo-geo-mask-band=0.99:1.01-sapo_tau_neg=2"
    group = f"{label}-group_norm-lr={up['actor.adam.lr']:g}-Qwen2.5-Math-1.5B"
    assert up["logger.wandb.group"] == group and up["logger.wandb.run_name"].startswith(group + "_seed42_")
    assert loss["correction"] == "geo-mask" and loss["threshold"] == [0.99, 1.01] and loss["sapo_tau_neg"] == 2.0
    assert out["offpolicy"]["settings"]["request_rollout_logprobs"] is True
    status, out = dry_run(MINIMAL_UPSTREAM_ARGV + ["--actor.eps_clip_low_high", "0.2", "0.28"], capsys)
    assert out["upstream"]["actor.eps_clip_low_high"] == [0.2, 0.28]
    assert out["offpolicy"]["policy_loss"]["clip_eps_high"] == 0.28


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


def preset_argv(preset):
    """The minimal command line with ``--config preset``; without its estimator when the preset picks one
    (lite_ppo), as the example scripts do (a command-line flag would win over the preset)."""
    with open(preset) as f:
        own_estimator = "algo.advantage.estimator" in (yaml.safe_load(f) or {})
    at = MINIMAL_UPSTREAM_ARGV.index("--algo.advantage.estimator")
    argv = MINIMAL_UPSTREAM_ARGV[:at] + MINIMAL_UPSTREAM_ARGV[at + 2:] if own_estimator else MINIMAL_UPSTREAM_ARGV
    return argv + ["--config", os.path.relpath(preset, REPO)]


@pytest.mark.parametrize("preset", PRESETS, ids=os.path.basename)
def test_every_preset_parses_through_upstreams_parser_with_its_values(preset, capsys):
    status, out = dry_run(preset_argv(preset), capsys)
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
        elif key == "vllm_is_truncated_threshold":  # a single delta is the band [0, delta]
            assert loss["threshold"] == (value if isinstance(value, list) else [0.0, value])
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


# script -> (variable, [(preset, registered method)]), from the registrations (README's script list too).
LAUNCH_SCRIPTS = launch_scripts()


def test_every_script_is_covered_and_every_preset_has_a_script():
    assert {os.path.basename(s) for s in SCRIPTS} == set(LAUNCH_SCRIPTS)
    variants = {preset for _, presets in LAUNCH_SCRIPTS.values() for preset, _ in presets}
    assert variants == {os.path.basename(p)[:-5] for p in PRESETS}


@pytest.mark.parametrize("script,variable,preset,method", [
    (s, var, p, m) for s, (var, presets) in LAUNCH_SCRIPTS.items() for p, m in presets])
def test_every_example_script_parses_through_upstreams_parser(script, variable, preset, method, capsys):
    env = {variable: preset} if variable else {}
    argv = script_argv(os.path.join(REPO, "examples", "scripts", script), **env)
    assert f"configs/{preset}.yaml" in argv
    status, out = dry_run(argv, capsys)
    assert status == 0, out
    up, loss = out["upstream"], out["offpolicy"]["policy_loss"]
    assert up["actor.model_name_or_path"] == "Qwen/Qwen2.5-Math-1.5B"
    assert up["vllm.num_engines"] == 8 and up["train.colocate_all"] is True
    assert up["rollout.n_samples_per_prompt"] == 8
    assert up["reward.remote_url"] == ["examples/scripts/reward_math.py"]
    selected = (loss["policy_loss_type"], loss["correction"])
    if method in CORRECTIONS.names():
        assert selected[1] == method, (method, selected)
    else:
        assert selected[0] == method, (method, selected)
    if script == "train_baseline.sh":
        assert selected == ("ppo", "none"), "the baseline runs PPO without a correction"
    assert up["logger.wandb.group"].startswith(loss["policy_loss_type"])


def test_an_example_script_runs_end_to_end_in_dry_run_mode_without_flash_attn():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no test stand-in for flash_attn
    result = subprocess.run(["bash", "examples/scripts/train_trm.sh", "--train.num_episodes", "3"],
                            env={**env, "DRY_RUN": "1", "CORRECTION": "trm_combined", "PYTHON": sys.executable},
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    resolved = json.loads(result.stdout)  # stdout is pure JSON
    assert resolved["offpolicy"]["policy_loss"]["trm_avg_delta"] == 0.002
    assert resolved["upstream"]["train.num_episodes"] == 3


def test_scripts_use_the_repositorys_venv_python_unless_python_is_given(tmp_path):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(os.path.join(REPO, "examples"), repo / "examples")
    venv_python = repo / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("#!/usr/bin/env bash\necho venv-python \"$@\"\n")
    venv_python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    run = subprocess.run(["bash", "examples/scripts/train_baseline.sh"], env={**env, "DRY_RUN": "1"}, cwd=repo,
                         capture_output=True, text=True, timeout=60)
    assert run.stdout.startswith("venv-python -m openrlhf_offpolicy.cli.train_ppo_ray"), run.stderr
    run = subprocess.run(["bash", "examples/scripts/train_baseline.sh"],
                         env={**env, "DRY_RUN": "1", "PYTHON": str(venv_python) + "-missing"}, cwd=repo,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "venv-python" not in run.stdout


def test_dry_run_stdout_is_pure_json_and_redacts_secrets():
    result = subprocess.run([sys.executable, "-m", "openrlhf_offpolicy.cli.train_ppo_ray", *MINIMAL_UPSTREAM_ARGV,
                             "--logger.wandb.key", "abc123", "--data.input_key", "question",
                             "--data.input_template", "no placeholder", "--dry_run"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    resolved = json.loads(result.stdout)
    assert "abc123" not in result.stdout and resolved["upstream"]["logger.wandb.key"] == "<redacted>"
    assert resolved["upstream"]["data.input_key"] == "question"  # a dataset column, not a secret
    assert "input_template" in result.stderr  # upstream's own warning went to stderr
    assert "pynvml" not in result.stderr and "real_accelerator" not in result.stderr


def test_default_wandb_groups_of_the_presets_are_distinct(capsys):
    groups = {}
    for preset in PRESETS:
        status, out = dry_run(preset_argv(preset), capsys)
        assert status == 0, out
        groups.setdefault(out["upstream"]["logger.wandb.group"], []).append(os.path.basename(preset))
    assert all(len(names) == 1 for names in groups.values()), groups


def test_a_missing_reward_is_one_line(capsys):
    argv = MINIMAL_UPSTREAM_ARGV[:2] + MINIMAL_UPSTREAM_ARGV[4:]
    status, err = dry_run(argv, capsys)
    assert status == 2 and err.count("\n") == 1 and "no reward: give --reward.remote_url" in err


BAD_INPUT = [
    (["--policy_loss_type", "grpo"], "invalid choice: 'grpo'"),
    (["--train.agent_func_path", "agent.sh"], "an agent is a Python file"),
    (["--train.agent_func_path", "no/such/agent.py", "--smoke_test", "1"], "no such file"),
    (["--enable_vllm_is_correction", "--vllm_is_correction_type", "mis"], "invalid choice: 'mis'"),
    (["--vllm_is_correction_type", "icepop"], "has no effect without --enable_vllm_is_correction"),
    (["--policy_loss_type", "sapo", "--actor.policy_loss_type", "gspo"], "contradicts --actor.policy_loss_type"),
    (["--enable_vllm_is_correction", "--algo.advantage.is_correction_level", "seq"], "conflicting correction"),
    (["--policy_loss_type", "dppo", "--enable_vllm_is_correction"], "applies the mismatch twice"),
    (["--enable_vllm_is_correction", "--vllm_is_truncated_threshold", "2.0", "1.0"], "is inverted"),
    (["--enable_vllm_is_correction", "--vllm_is_truncated_threshold", "1.5", "3.0"], "0 <= low <= 1 <= high"),
    (["--enable_vllm_is_correction", "--vllm_is_correction_type", "tv-mask"], "upper bound only"),
    (["--enable_vllm_is_correction", "--vllm.num_engines", "0"], "vLLM is off"),
    (["--policy_loss_type", "gspo", "--enable_vllm_is_correction", "--vllm_is_correction_type", "trm"],
     "use policy_loss_type='gspo_token'"),
    (["--policy_loss_type", "sapo", "--sapo_tau_pos", "0"], "sapo_tau_pos=0.0: must be > 0"),
    (["--enable_vllm_is_correction", "--vllm_is_correction_type", "trm", "--trm_max_delta", "-1"],
     "trm_max_delta=-1.0: must be > 0"),
    (["--rejection", "seq_max_k1:0.1"], "seq_max takes k2 or k3 only"),
    (["--rejection", "token_k2:0.1", "--vllm.num_engines", "0"], "--rejection token_k2:0.1 needs the rollout"),
    (["--is_batch_normalize"], "no correction is selected"),
    (["--enable_vllm_is_correction", "--vllm_is_correction_type", "trm", "--trm_max_delta", "none"],
     "trm_max_delta or trm_avg_delta"),
    (["--dppo_divergence", "k2"], "invalid choice: 'k2'"),
    (["--policy_loss_type", "is_reshape", "--is_reshape_gamma", "2"], "is_reshape_gamma=2.0: must lie in [0, 1]"),
    (["--policy_loss_type", "cispo", "--cispo_clip_range", "1.5", "2"], "must contain 1"),
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
    # bad input that used to reach upstream's parser (7 s, a usage dump)
    (["--rollout.batchsize", "8"], "unknown flag --rollout.batchsize; did you mean --rollout.batch_size?"),
    (["--num_engines", "2"], "did you mean --vllm.num_engines?"),
    (["--config", "tests/cli/data/typo.yaml"], "tests/cli/data/typo.yaml: unknown key 'sapo_tau_po'"),
    (["--config", "tests/cli/data/typo.yaml"], "did you mean sapo_tau_pos?"),
    (["--config", "tests/cli/data/nested.yaml"], "key 'actor' holds a nested mapping"),
    (["--config", "tests/cli/data/list.yaml"], "expected a mapping of flag: value"),
    (["--config", "tests/cli/data/broken.yaml"], "not valid YAML"),
    (["--policy_loss_type", "sapo", "--sapo_tau_pos", "1", "2"],
     "--sapo_tau_pos takes one value; got the extra value '2'"),
    (["--actor.eps_clip_low_high", "0.1", "0.2", "0.3"], "--actor.eps_clip_low_high takes 2 values"),
    (["--train.colocate_all", "yes"], "--train.colocate_all takes no value"),
    (["--actor.policy_loss_type", "sapo"], "selected with --policy_loss_type sapo"),
    (["--rollout.batch_size", "many"], "invalid int value: 'many'"),
    (["--actor.eps_clip", "nan"], "--actor.eps_clip: nan is not a value"),
    (["--sapo_tau_pos", "nan", "--policy_loss_type", "sapo"], "nan is not a value"),
    # abbreviations, ours and upstream's alike
    (["--vllm.num_engine", "2", "--enable_vllm_is_correction"], "--vllm.num_engine is an abbreviation"),
    (["--logger.wandb.grou", "G"], "write --logger.wandb.group"),
    (["--policy_loss_type", "sapo", "--actor.policy_loss_ty", "gspo"], "--actor.policy_loss_ty is an abbreviation"),
    (["--policy_loss_ty", "sapo"], "write --policy_loss_type"),
    (["--enable_vllm_is", "--vllm_is_correction_type", "tis"], "--enable_vllm_is is an abbreviation"),
    (["--dry"], "--dry is an abbreviation"),
    # parameters of a method that is not selected
    (["--sapo_tau_pos", "2"], "sapo_tau_pos is read only by the policy loss sapo"),
    (["--enable_vllm_is_correction", "--vllm_is_correction_type", "tis", "--trm_max_delta", "0.01"],
     "trm_max_delta is read only by the correction trm"),
    (["--policy_loss_type", "sapo", "--actor.eps_clip_low_high", "0.2", "0.28"],
     "policy loss sapo does not have"),
    (["--policy_loss_type", "cispo", "--actor.dual_clip", "3"], "--actor.dual_clip sets the PPO clip"),
    (["--vllm_is_truncated_threshold", "2", "1"], "is inverted"),
    (["--algo.advantage.is_correction_threshold", "3", "1"], "is inverted"),
    # 0.9.x flags
    (["--perf"], "--perf is an OpenRLHF 0.9.x flag with no 0.11.2 equivalent"),
    (["--ptx_coef", "0.1"], "no pretraining (PTX) loss"),
    # missing inputs
    (["--actor.model_name_or_path", ""], "no policy model"),
]


def test_the_bad_input_list_has_at_least_30_entries():
    assert len(BAD_INPUT) >= 30


def _argv(argv):
    base = [a for a in MINIMAL_UPSTREAM_ARGV]
    if "--vllm.num_engines" in argv:
        i = base.index("--vllm.num_engines")
        del base[i:i + 2]
    return base + argv


@pytest.mark.parametrize("argv,message", BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_bad_input_exits_2_with_a_one_line_reason_in_process(argv, message, capsys):
    """In-process (as the library's callers see it): the exit status and the single line."""
    from openrlhf_offpolicy.cli.train_ppo_ray import main

    status = main(_argv(argv))
    out, err = capsys.readouterr()
    assert status == 2 and out == "", out[-500:]
    lines = [line for line in err.splitlines() if not line.startswith("train_ppo_ray: note:")]
    assert len(lines) == 1 and lines[0].startswith("train_ppo_ray: error:") and message in lines[0], err


@pytest.mark.parametrize("argv,message", BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_bad_input_exits_2_with_one_line_as_a_process_before_importing_anything_heavy(argv, message, tmp_path):
    """In a fresh process, as a user runs it: refused before torch, Ray, vLLM, DeepSpeed, transformers
    or OpenRLHF is imported (what makes the refusal immediate, whatever the machine's load)."""
    result, heavy = cli_process(_argv(argv), tmp_path, cwd=REPO)
    assert result.returncode == 2 and result.stdout == "", result.stderr[-1500:]
    lines = [line for line in result.stderr.splitlines() if not line.startswith("train_ppo_ray: note:")]
    assert len(lines) == 1 and lines[0].startswith("train_ppo_ray: error:") and message in lines[0], result.stderr
    assert heavy == [], f"imported {heavy} before refusing"


def test_the_checks_and_the_dry_run_do_not_import_torch():
    code = ("import sys\n"
            "from openrlhf_offpolicy.cli.train_ppo_ray import main\n"
            "bad = main(sys.argv[1:] + ['--sapo_tau_pos', '2'])\n"
            "ok = main(sys.argv[1:] + ['--dry_run'])\n"
            "print(bad, ok, 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code, *_argv([])], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "2 0 False", result.stdout[-500:] + result.stderr[-1500:]


def test_an_upstream_argument_check_is_reported_in_one_line(capsys):
    # upstream asserts that group_norm needs more than one sample per prompt
    argv = [a if a != "4" else "1" for a in MINIMAL_UPSTREAM_ARGV]
    status, err = dry_run(argv, capsys)
    assert status == 2 and "upstream train_ppo_ray rejected the arguments" in err
    assert "n_samples_per_prompt > 1" in err


def test_help_lists_our_flags_and_upstreams_without_flash_attn_within_a_minute():
    """The one timing check: its bound is far above any machine's load (about 2 s when idle)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "openrlhf_offpolicy.cli.train_ppo_ray", "--help"],
                            cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-2000:]
    for flag in ("--vllm_is_correction_type", "--trm_max_delta", "--is_reshape_kernel", "--dry_run",
                 "--actor.model_name_or_path", "--algo.advantage.is_correction_level"):
        assert flag in result.stdout
    assert elapsed < 60.0


def test_dry_run_needs_no_gpu_module():
    code = ("import sys, json, io, contextlib\n"
            "from openrlhf_offpolicy.cli.train_ppo_ray import main\n"
            f"argv = {MINIMAL_UPSTREAM_ARGV!r} + ['--dry_run']\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert main(argv) == 0\n"
            "heavy = sorted(m for m in ('flash_attn', 'vllm', 'deepspeed', 'ray') if m in sys.modules)\n"
            "print(json.dumps(heavy))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == []


def _without_openrlhf(tmp_path):
    """A sitecustomize that hides OpenRLHF from this Python, as after `make lab` alone."""
    (tmp_path / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'openrlhf' or name.startswith('openrlhf.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n")
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(tmp_path)}


def test_without_upstream_help_and_dry_run_say_how_to_install_it(tmp_path):
    env = _without_openrlhf(tmp_path)
    cli = [sys.executable, "-m", "openrlhf_offpolicy.cli.train_ppo_ray"]
    helped = subprocess.run([*cli, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert helped.returncode == 0 and "--vllm_is_correction_type" in helped.stdout
    assert helped.stderr.count("\n") == 1 and "pip install openrlhf==0.11.2" in helped.stderr
    dry = subprocess.run([*cli, *MINIMAL_UPSTREAM_ARGV, "--dry_run"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env=env)
    assert dry.returncode == 2 and dry.stderr.count("\n") == 1 and "make test" in dry.stderr, dry.stderr


def test_a_real_run_without_flash_attn_stops_with_one_line(monkeypatch):
    import importlib.util

    from openrlhf_offpolicy.integration.driver import launch
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "flash_attn" else real_find_spec(name, *a))
    with pytest.raises(launch.MissingDependency, match="a real run needs flash_attn.*pip install flash-attn"):
        launch.require_gpu_stack()


def test_every_flag_named_after_a_policy_loss_argument_reads_the_librarys_help_text():
    """The help of a PolicyLoss argument is written once (corrections.config.ARGUMENT_HELP, the registry's
    Param.help): the CLI flag of the same name reads it."""
    from openrlhf_offpolicy.cli.train_ppo_ray import build_parser
    from openrlhf_offpolicy.corrections import method_params
    from openrlhf_offpolicy.corrections.config import ARGUMENT_HELP

    written_once = {**ARGUMENT_HELP, **{name: p.help for name, p in method_params().items()}}
    shared = [a for a in build_parser()._actions if a.dest in written_once]
    assert len(shared) >= 6 + len(method_params())
    for action in shared:
        assert action.help.startswith(written_once[action.dest]), action.dest
