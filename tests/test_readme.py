"""The README stays true: its method tables list every registered method and its GPU quickstart
command parses through the real CLI (upstream's parser included)."""

import os
import re
import shlex

from helpers import dry_run

from openrlhf_offpolicy.corrections import POLICY_LOSSES, correction_choices, method_params, tables

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
README = open(os.path.join(REPO, "README.md")).read()


def code_blocks(language="bash"):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_generated_blocks_equal_their_rendering_from_the_registry():
    assert tables.render(README) == README, "refresh them: python -m openrlhf_offpolicy.corrections.tables README.md"


def test_tables_list_every_correction_loss_and_parameter():
    for name in correction_choices():
        assert f"`{name}`" in README, name
    for name in POLICY_LOSSES.names():
        assert f"| `{name}` |" in README, name
    for name in method_params():
        assert f"--{name}" in README, name


def test_readme_names_both_commands():
    assert "make test" in README and "make lab" in README


def test_gpu_quickstart_command_parses_through_the_cli(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    block = next(b for b in code_blocks() if "ray job submit" in b)
    tokens = shlex.split(block.replace("\\\n", " ").replace('"$WANDB_API_KEY"', "dummy-key"))
    argv = tokens[tokens.index("openrlhf_offpolicy.cli.train_ppo_ray") + 1:]
    status, out = dry_run(argv, capsys)
    assert status == 0, out
    assert out["upstream"]["vllm.num_engines"] == 8 and out["upstream"]["logger.wandb.key"] == "<redacted>"
    assert out["offpolicy"]["policy_loss"]["correction"] == "trm"
    assert out["offpolicy"]["policy_loss"]["trm_max_delta"] == 0.05


def test_the_loss_snippet_runs_as_written(capsys):
    block = next(b for b in code_blocks("python") if "PolicyLoss(" in b)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "trm/accept_rate" in out and "vllm_is_correction_type = 'tis'" in out
