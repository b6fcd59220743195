import pickle
import subprocess
import sys

import pytest
from helpers import MINIMAL_UPSTREAM_ARGV, resolved

from openrlhf_offpolicy.integration.runtime.settings import ENV_VAR, OffPolicySettings
from openrlhf_offpolicy.integration.runtime.upstream_args import loss_kwargs_from_args, peek_upstream_args

SETTINGS = OffPolicySettings(
    loss_kwargs={"enable_vllm_is_correction": True, "vllm_is_correction_type": "trm", "trm_max_delta": 0.1},
    policy_loss_type="sapo",
)


def test_settings_round_trip_through_json():
    assert OffPolicySettings.from_json(SETTINGS.to_json()) == SETTINGS


def test_the_resolved_config_crosses_as_json_and_comes_back_typed_and_equal():
    upstream = {**loss_kwargs_from_args(peek_upstream_args(MINIMAL_UPSTREAM_ARGV)), "policy_loss_type": "sapo"}
    settings = resolved(SETTINGS, **upstream)
    back = OffPolicySettings.from_json(settings.to_json())
    assert back == settings and back.config() == settings.config()
    assert back.config().validated and back.config().params.trm_max_delta == 0.1
    assert back.config_for(upstream) == settings.config()
    with pytest.raises(RuntimeError, match="was resolved with"):
        back.config_for({**upstream, "clip_eps_high": 0.3})
    with pytest.raises(RuntimeError, match="carry no resolved OffPolicyConfig"):
        SETTINGS.config()


def test_unpickling_settings_has_no_side_effect(tmp_path):
    """A plain value: a process that unpickles upstream's args (carrying our settings) is not patched."""
    blob = tmp_path / "settings.pkl"
    blob.write_bytes(pickle.dumps(SETTINGS))
    script = (
        "import pickle, sys\n"
        f"s = pickle.loads(open({str(blob)!r}, 'rb').read())\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'openrlhf', 'vllm', 'deepspeed'))\n"
        "from openrlhf.trainer.ray import ppo_actor\n"
        "print(ppo_actor.PolicyLoss.__module__, heavy, s.loss_kwargs['trm_max_delta'])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env=_env_with_stubs())
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["openrlhf.models.loss", "[]", "0.1"]


def _env_with_stubs():
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ)
    env.pop(ENV_VAR, None)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(here, "..", "..", "stubs"), env.get("PYTHONPATH", "")])
    return env
