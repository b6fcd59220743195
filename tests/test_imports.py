"""Import boundaries: corrections and the loss are pure torch; the CLI validates before importing
OpenRLHF, Ray or vLLM; only ``integration`` touches OpenRLHF."""

import os
import re
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def imported_after(statement):
    code = (f"import sys\n{statement}\n"
            "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in "
            "('openrlhf', 'ray', 'vllm', 'deepspeed', 'transformers')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_corrections_and_policy_loss_import_torch_only():
    assert imported_after("import openrlhf_offpolicy.corrections, openrlhf_offpolicy.models") == "[]"


def test_the_cli_checks_flags_without_importing_openrlhf_ray_or_vllm():
    statement = ("from openrlhf_offpolicy.cli.train_ppo_ray import parse\n"
                 "parse(['--actor.model_name_or_path', 'm', '--reward.remote_url', 'r.py', '--vllm.num_engines', '1', "
                 "'--enable_vllm_is_correction'])")
    assert imported_after(statement) == "[]"


def test_only_integration_imports_openrlhf():
    pattern = re.compile(r"^\s*(from|import)\s+openrlhf(\.|\s|$)", re.M)
    package = os.path.join(REPO, "openrlhf_offpolicy")
    for root, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py") and os.path.relpath(root, package).split(os.sep)[0] != "integration":
                with open(os.path.join(root, name)) as f:
                    assert not pattern.search(f.read()), os.path.join(root, name)


def test_a_ray_workers_setup_hook_imports_no_torch_vllm_deepspeed_or_openrlhf():
    """The hook runs before Ray's CUDA_VISIBLE_DEVICES matters: post-import hooks only, every feature on."""
    code = ("import json, os, sys\n"
            "from openrlhf_offpolicy.integration.runtime.settings import ENV_VAR, OffPolicySettings\n"
            "os.environ[ENV_VAR] = OffPolicySettings(logprobs_topk=4, match_rollout_sampling=True, "
            "rollout_top_p=0.9, routing_replay='r3', max_staleness=0, cpu_backend=True, "
            "advantage_estimator='reinforce_max').to_json()\n"
            "from openrlhf_offpolicy.integration.runtime import worker, patches\n"
            "worker.setup()\n"
            "assert patches.current() is not None\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'vllm', 'deepspeed', 'transformers', 'openrlhf', 'numpy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_import_linter_contracts_hold():
    """Layers point down (cli -> driver -> runtime -> models -> corrections), corrections and models import no
    OpenRLHF/Ray/vLLM/DeepSpeed/transformers, and no sibling modules form a cycle (pyproject.toml)."""
    lint_imports = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    out = subprocess.run([lint_imports, "--no-cache"], capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stdout[-4000:]


def test_a_planted_upward_import_breaks_the_contracts(tmp_path):
    """The check can fail: a copy of the package whose corrections import the CLI (an upward import
    and, with the CLI importing corrections, a cycle) is refused."""
    import shutil

    shutil.copytree(os.path.join(REPO, "openrlhf_offpolicy"), tmp_path / "openrlhf_offpolicy",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(REPO, "pyproject.toml"), tmp_path / "pyproject.toml")
    planted = {"corrections/planted.py": "from ..cli import train_ppo_ray  # noqa: F401\n",
               # the runtime layer reaching up into the driver, inside a function
               "integration/runtime/planted.py": "def f():\n    from ..driver import launch  # noqa: F401\n"}
    for path, text in planted.items():
        with open(tmp_path / "openrlhf_offpolicy" / path, "w") as f:
            f.write(text)
    lint_imports = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    out = subprocess.run([lint_imports, "--no-cache"], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    report = " ".join(out.stdout.split())
    assert out.returncode != 0
    assert "openrlhf_offpolicy.corrections is not allowed to import openrlhf_offpolicy.cli" in report
    assert ("openrlhf_offpolicy.integration.runtime is not allowed to import openrlhf_offpolicy.integration.driver"
            in report)
    assert "No import cycles between sibling modules BROKEN" in report


def test_a_planted_cycle_between_two_runtime_modules_breaks_the_contracts(tmp_path):
    """Zero cycles at every depth, counting imports inside functions: two modules of the runtime
    layer importing each other (one of them lazily) are refused."""
    import shutil

    shutil.copytree(os.path.join(REPO, "openrlhf_offpolicy"), tmp_path / "openrlhf_offpolicy",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(REPO, "pyproject.toml"), tmp_path / "pyproject.toml")
    runtime = tmp_path / "openrlhf_offpolicy" / "integration" / "runtime"
    (runtime / "planted_a.py").write_text("from . import planted_b  # noqa: F401\n")
    (runtime / "planted_b.py").write_text("def f():\n    from . import planted_a  # noqa: F401\n")
    lint_imports = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    out = subprocess.run([lint_imports, "--no-cache"], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode != 0
    assert "No import cycles between sibling modules BROKEN" in " ".join(out.stdout.split())
