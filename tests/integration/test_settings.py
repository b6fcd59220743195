import pickle
import subprocess
import sys

import pytest
from helpers import MINIMAL_UPSTREAM_ARGV

from openrlhf_offpolicy.integration.settings import ENV_VAR, OffPolicySettings
from openrlhf_offpolicy.integration.upstream_args import peek_upstream_args

SETTINGS = OffPolicySettings(
    loss_kwargs={"enable_vllm_is_correction": True, "vllm_is_correction_type": "trm", "trm_max_delta": 0.1},
    policy_loss_type="sapo",
)


def test_settings_round_trip_through_json():
    assert OffPolicySettings.from_json(SETTINGS.to_json()) == SETTINGS


def test_check_resolves_the_loss_config_from_upstream_args_and_our_flags():
    config = SETTINGS.check(peek_upstream_args(MINIMAL_UPSTREAM_ARGV + ["--actor.eps_clip_low_high", "0.2", "0.28"]))
    assert config.policy_loss_type == "sapo" and config.correction == "trm" and config.param("trm_max_delta") == 0.1
    assert (config.clip_eps_low, config.clip_eps_high) == (0.2, 0.28)


@pytest.mark.parametrize("argv,message", [
    (["--actor.policy_loss_type", "gspo"], "contradicts --actor.policy_loss_type gspo"),
    (["--vllm.num_engines", "0"], "vLLM is off"),
    (["--algo.advantage.is_correction_level", "token"], "conflicting correction settings"),
])
def test_check_rejects_contradictions_with_upstream_flags(argv, message):
    args = MINIMAL_UPSTREAM_ARGV + argv
    with pytest.raises(ValueError, match=message):
        SETTINGS.check(peek_upstream_args(args), [a for a in args if a.startswith("--")])


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
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(here, "..", "stubs"), env.get("PYTHONPATH", "")])
    return env
