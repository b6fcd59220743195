"""The built wheel carries every registered preset, and presets work from an install outside the checkout."""

import json
import os
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = (
    "import json, os, openrlhf_offpolicy\n"
    "from openrlhf_offpolicy.cli.config_file import load_preset\n"
    "from openrlhf_offpolicy.presets import registered_presets\n"
    "print(json.dumps({'package': openrlhf_offpolicy.__file__, 'presets': len(registered_presets()),\n"
    "                  'tis': load_preset('configs/tis.yaml')[0]}))\n"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "-w", str(out), REPO], check=True, capture_output=True, timeout=300)
    (path,) = out.glob("*.whl")
    return path


def test_the_wheel_ships_every_preset_of_the_checkout(wheel):
    shipped = {os.path.basename(n) for n in zipfile.ZipFile(wheel).namelist() if "/configs/" in n}
    in_checkout = {f for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".yaml")}
    assert in_checkout and shipped == in_checkout


def test_presets_resolve_from_an_installed_wheel_in_a_directory_without_configs(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--target", str(site), str(wheel)], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run([sys.executable, "-c", PROBE], cwd=elsewhere, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["package"].startswith(str(site)), got["package"]
    assert got["presets"] == len([f for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".yaml")])
    assert got["tis"]["vllm_is_correction_type"] == "tis"
