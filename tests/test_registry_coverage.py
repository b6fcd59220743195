"""Every registered method carries everything the project derives from it, and the message says
which file to edit when something is missing."""

import os

import pytest
import reference

from openrlhf_offpolicy.corrections import CORRECTIONS, NO_CORRECTION, POLICY_LOSSES

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
README = open(os.path.join(REPO, "README.md")).read()
REFRESH = "run `python -m openrlhf_offpolicy.cli.docs`"


def _readme_row(name):
    return f"| `{name}` |" in README or f"| `{name}` (" in README


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_every_policy_loss_has_a_reference_a_gradient_reference_a_readme_row_and_a_preset(name):
    entry = POLICY_LOSSES.get(name)
    assert name in reference.LOSSES, f"add a float64 reference for {name!r} to tests/reference.py (LOSSES)"
    assert name in reference.GRADIENTS, (
        f"add the gradient of {name!r} to tests/reference.py (GRADIENTS); "
        "tests/corrections/test_losses.py checks autograd against it")
    assert _readme_row(name), f"README.md has no row for {name!r}: {REFRESH}"
    assert entry.source and entry.fn.__doc__, \
        f"give {name!r} its paper (source=) and a docstring where it is registered"
    for preset in (entry.preset, *entry.variants):
        assert preset and os.path.isfile(os.path.join(REPO, preset)), \
            f"add the preset {preset or 'configs/<name>.yaml'}"


@pytest.mark.parametrize("name", [n for n in CORRECTIONS.names() if n != NO_CORRECTION])
def test_every_correction_has_a_reference_and_a_readme_row(name):
    entry = CORRECTIONS.get(name)
    assert name in reference.CORRECTIONS, f"add a float64 reference for {name!r} to tests/reference.py (CORRECTIONS)"
    assert _readme_row(name), f"README.md has no row for {name!r}: {REFRESH}"
    assert entry.source and entry.fn.__doc__, \
        f"give {name!r} its paper (source=) and a docstring where it is registered"
    for preset in (entry.preset, *entry.variants):
        assert preset and os.path.isfile(os.path.join(REPO, preset)), \
            f"add the preset {preset or 'configs/<name>.yaml'}"


def test_every_preset_belongs_to_a_registered_method():
    registered = {p for e in list(CORRECTIONS) + list(POLICY_LOSSES) for p in (e.preset, *e.variants) if p}
    on_disk = {f"configs/{f}" for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".yaml")}
    assert on_disk <= registered, f"register these presets (preset= or variants=): {sorted(on_disk - registered)}"
