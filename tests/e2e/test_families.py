"""Every correction and policy-loss family of the registry runs end to end in ``make test``.

A family is a module of ``corrections`` (token IS, sequence IS, trust region, ..., one policy loss
or a few). The cases of ``test_train_ppo_ray.py`` run one method of most families; each family they
leave out runs here, with its preset, on one DP rank (the two-rank cases exercise the reductions).
Both lists derive from the registry and that file's flags, so a new family is covered or fails here.
"""

import math
import os
import re

import pytest
import yaml

from openrlhf_offpolicy.corrections import CORRECTIONS, POLICY_LOSSES
from smoke_runs import REPO

pytestmark = pytest.mark.e2e

HERE = os.path.dirname(os.path.abspath(__file__))
ONE_RANK = ["--actor.num_gpus_per_node", "1", "--ref.num_gpus_per_node", "1"]
ENTRIES = [*CORRECTIONS, *POLICY_LOSSES]


def family(entry) -> str:
    return entry.fn.__module__.rsplit(".", 1)[-1]


def methods_of_the_other_cases() -> set:
    """Every correction / policy loss named in test_train_ppo_ray.py, by flag or by preset."""
    with open(os.path.join(HERE, "test_train_ppo_ray.py")) as f:
        source = f.read()
    names = {"ppo", "none"}  # upstream's default loss; the cases without a correction
    names |= set(re.findall(r'"--(?:policy_loss_type|vllm_is_correction_type)",\s*"([a-z0-9_-]+)"', source))
    for path in re.findall(r'"(configs/[a-z0-9_]+\.yaml)"', source):
        with open(os.path.join(REPO, path)) as f:
            preset = yaml.safe_load(f)
        names.add(preset.get("policy_loss_type", "ppo"))
        if preset.get("enable_vllm_is_correction"):
            names.add(preset["vllm_is_correction_type"])
    return names


def presets_of_the_families_left_out() -> dict:
    """family -> the preset of its first method with one, for the families no other case runs."""
    covered = {family(e) for e in ENTRIES if e.name in methods_of_the_other_cases()}
    left = {}
    for entry in ENTRIES:
        if family(entry) not in covered and entry.preset:
            left.setdefault(family(entry), entry.preset)
    return left


LEFT_OUT = presets_of_the_families_left_out()


def test_every_family_of_the_registry_runs_in_some_e2e_case():
    runs = {family(e) for e in ENTRIES if e.name in methods_of_the_other_cases()} | set(LEFT_OUT)
    assert {family(e) for e in ENTRIES} <= runs, sorted({family(e) for e in ENTRIES} - runs)
    assert len(runs) >= 20


@pytest.mark.parametrize("family_name", sorted(LEFT_OUT))
def test_a_family_no_other_case_runs_trains_two_finite_steps(smoke, family_name):
    run = smoke("--config", LEFT_OUT[family_name], *ONE_RANK).ok()
    assert [row["step"] for row in run.steps] == [1, 2]
    for row in run.steps:
        assert math.isfinite(row["policy_loss"]) and math.isfinite(row["actor_grad_norm"])
