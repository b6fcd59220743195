"""The README and docs/ stay true: generated tables equal their rendering, the README is short with a
table of contents, its cluster quickstart equals the script it names, its CPU dry run resolves every
preset, and the loss snippet of docs/design.md runs."""

import glob
import os
import re
import shlex
import subprocess

import pytest
from helpers import dry_run

from openrlhf_offpolicy.cli import docs
from openrlhf_offpolicy.corrections import POLICY_LOSSES, correction_choices, method_params

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
README = open(os.path.join(REPO, "README.md")).read()
DESIGN = open(os.path.join(REPO, "docs", "design.md")).read()
MAX_LINES = 250


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def code_blocks(text, language="bash"):
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def cli_argv(block):
    tokens = shlex.split(block.replace("\\\n", " ").replace('"$WANDB_API_KEY"', "dummy-key"))
    return tokens[tokens.index("openrlhf_offpolicy.cli.train_ppo_ray") + 1:]


@pytest.mark.parametrize("path", sorted(docs.FILES))
def test_generated_blocks_equal_their_rendering(path):
    with open(os.path.join(REPO, path)) as f:
        text = f.read()
    assert docs.render(text, docs.FILES[path]) == text, "refresh them: python -m openrlhf_offpolicy.cli.docs"


def test_the_readme_is_short_and_its_contents_link_every_section_in_order():
    lines = README.splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"
    sections = [line[3:] for line in lines if line.startswith("## ")]
    assert sections[0] == "Contents"
    anchors = re.findall(r"\]\(#([a-z0-9-]+)\)", README.split("## The two commands")[0])
    slug = [re.sub(r"[^a-z0-9 -]", "", s.lower()).replace(" ", "-") for s in sections[1:]]
    assert anchors == slug, (anchors, slug)
    assert slug == ["the-two-commands", "cpu-the-first-5-minutes", "cluster-quickstart", "methods", "flags",
                    "compare-runs", "layout-and-adding-a-method"]
    for link in re.findall(r"\]\((docs/[^)#]+)", README):
        assert os.path.exists(os.path.join(REPO, link)), link


def test_tables_list_every_correction_loss_and_parameter():
    for name in correction_choices():
        assert f"`{name}`" in README, name
    for name in POLICY_LOSSES.names():
        assert f"| `{name}` |" in README, name
    for name in method_params():
        assert f"--{name}" in README, name


def test_readme_names_the_commands():
    for command in ("make demo", "make test", "make lab", "--dry_run", "--smoke_test",
                    "python -m openrlhf_offpolicy.compare"):
        assert command in README, command
    assert README.index("make demo") < README.index("make test")


def test_the_readme_states_no_machine_notes():
    for text in (README, *(open(p).read() for p in glob.glob(os.path.join(REPO, "docs", "*.md")))):
        assert not re.search(r"quiet|did not fit|this session|2-core machine", text)


def test_the_cluster_quickstart_equals_the_script_it_names(capsys):
    block = next(b for b in code_blocks(README) if "ray job submit" in b)
    status, written = dry_run(cli_argv(block), capsys)
    assert status == 0, written
    assert "bash examples/scripts/train_trm.sh" in README
    script = subprocess.run(["bash", "examples/scripts/train_trm.sh"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PRINT_ARGV": "1", "WANDB_API_KEY": "dummy-key"})
    status, scripted = dry_run(script.stdout.splitlines(), capsys)
    assert status == 0, scripted
    for out in (written, scripted):
        out["upstream"].pop("logger.wandb.run_name")
    assert written == scripted
    assert written["upstream"]["vllm.num_engines"] == 8 and written["upstream"]["logger.wandb.key"] == "<redacted>"
    assert written["offpolicy"]["policy_loss"]["correction"] == "trm"
    assert "--runtime-env-json" in block and '"checkpoint"' in block  # the script's excludes


@pytest.mark.parametrize("preset", sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml"))))
def test_the_cpu_dry_run_line_resolves_every_preset(preset, capsys):
    block = next(b for b in code_blocks(README) if "--dry_run" in b)
    argv = [t for t in cli_argv(block) if t != "--dry_run"]
    argv[argv.index("--config") + 1] = os.path.relpath(preset, REPO)
    status, out = dry_run(argv, capsys)
    assert status == 0, out


def test_the_loss_snippet_runs_as_written(capsys):
    block = next(b for b in code_blocks(DESIGN, "python") if "PolicyLoss(" in b)
    exec(compile(block, "docs/design.md", "exec"), {})
    out = capsys.readouterr().out
    assert "trm/accept_rate" in out and "vllm_is_correction_type = 'tis'" in out
