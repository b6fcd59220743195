"""launch.run installs, before upstream's modules are imported, the very settings upstream's parse
finalises to: the parse-time re-install is then a no-op, and a replaced method of a @ray.remote class
stays the object Ray captured at import (Ray pickles it by reference; a new one fails to export)."""

import pytest
from helpers import MINIMAL_UPSTREAM_ARGV

from openrlhf_offpolicy.integration.driver import launch
from openrlhf_offpolicy.integration.runtime.settings import OffPolicySettings
from openrlhf_offpolicy.integration.runtime.upstream_args import given_flags, peek_upstream_args

ICEPOP = {"enable_vllm_is_correction": True, "vllm_is_correction_type": "icepop"}
CASES = {
    "r3 with icepop": (OffPolicySettings(loss_kwargs=ICEPOP, routing_replay="r3"), []),
    "no mismatch metrics, a correction": (OffPolicySettings(loss_kwargs=ICEPOP, request_rollout_logprobs=False), []),
    "no mismatch metrics, no correction": (OffPolicySettings(request_rollout_logprobs=False), []),
    "upstream clip and gate": (OffPolicySettings(policy_loss_type="sapo"),
                               ["--actor.eps_clip_low_high", "0.2", "0.28", "--actor.loss_agg_mode",
                                "seq-mean-token-mean"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_settings_installed_before_upstream_parses_equal_those_its_parse_finalises_to(case):
    settings, extra = CASES[case]
    argv = MINIMAL_UPSTREAM_ARGV + extra
    _, _, parsed_final = launch.run(argv, settings, dry_run=True, explicit_flags=given_flags(argv))
    _, installed = launch.final_settings(peek_upstream_args(argv), settings, given_flags(argv))
    assert installed == parsed_final
    assert launch.final_settings(peek_upstream_args(argv), installed, given_flags(argv))[1] == installed
