"""``make e2e-all``: every registered preset as a two-step CPU run (outside ``make test``: ~1 min each).

Set ``OFFPOLICY_E2E_ALL=1`` to run (``make e2e-all`` does); otherwise each case is skipped.
"""

import math
import os

import pytest

from openrlhf_offpolicy.corrections import CORRECTIONS, POLICY_LOSSES

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.environ.get("OFFPOLICY_E2E_ALL") != "1",
                                                  reason="make e2e-all runs every preset (OFFPOLICY_E2E_ALL=1)")]

PRESETS = sorted({path for entry in list(POLICY_LOSSES) + list(CORRECTIONS)
                  for path in (entry.preset, *entry.variants) if path})


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_two_finite_steps(smoke, preset):
    run = smoke("--config", preset).ok()
    assert [row["step"] for row in run.steps] == [1, 2]
    for row in run.steps:
        assert math.isfinite(row["policy_loss"]) and math.isfinite(row["actor_grad_norm"])
