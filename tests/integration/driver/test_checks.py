"""The settings checked against upstream's parsed args, and the one configuration resolved from them."""

import pytest
from helpers import MINIMAL_UPSTREAM_ARGV

from openrlhf_offpolicy.integration.driver.checks import check_settings
from openrlhf_offpolicy.integration.runtime.settings import OffPolicySettings
from openrlhf_offpolicy.integration.runtime.upstream_args import loss_kwargs_from_args, peek_upstream_args

SETTINGS = OffPolicySettings(
    loss_kwargs={"enable_vllm_is_correction": True, "vllm_is_correction_type": "trm", "trm_max_delta": 0.1},
    policy_loss_type="sapo",
)


def test_check_resolves_the_loss_config_from_upstream_args_and_our_flags():
    args = peek_upstream_args(MINIMAL_UPSTREAM_ARGV + ["--actor.eps_clip_low_high", "0.2", "0.28"])
    config = check_settings(SETTINGS, args).config()
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
        check_settings(SETTINGS, peek_upstream_args(args), [a for a in args if a.startswith("--")])


def test_the_resolved_settings_remember_the_upstream_kwargs_the_trainer_will_pass():
    args = peek_upstream_args(MINIMAL_UPSTREAM_ARGV)
    settings = check_settings(SETTINGS, args)
    args.actor.policy_loss_type = "sapo"  # launch.finalize_args writes --policy_loss_type into upstream's args
    assert settings.config_for(loss_kwargs_from_args(args)).policy_loss_type == "sapo"
