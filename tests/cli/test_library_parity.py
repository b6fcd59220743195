"""The library and the CLI refuse the same inputs: every command line of the CLI's bad-input list that
only sets ``PolicyLoss`` arguments is refused by ``PolicyLoss(**kwargs)`` too, for the same reason.

The CLI repeats a few of the library's rules so that it refuses before importing torch; the reason
is then worded for flags (``--x``) or by argparse (``invalid choice``), so for those entries only the
refusal is compared, not the words.
"""

import importlib.util
import math
import os

import pytest

from openrlhf_offpolicy.corrections import method_params
from openrlhf_offpolicy.models import PolicyLoss


def _cli_bad_input():
    """``BAD_INPUT`` of test_train_ppo_ray.py (test modules are not importable by name here)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_train_ppo_ray.py")
    spec = importlib.util.spec_from_file_location("_cli_bad_input", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BAD_INPUT


BAD_INPUT = _cli_bad_input()

# Upstream 0.11.2 flags that are PolicyLoss arguments under another name.
UPSTREAM_LOSS_FLAGS = {
    "algo.advantage.is_correction_level": "is_correction_level",
    "algo.advantage.is_correction_mode": "is_correction_mode",
    "algo.advantage.is_correction_gating": "is_correction_gating",
    "algo.advantage.is_correction_threshold": "is_correction_threshold",
}
OUR_LOSS_FLAGS = {"policy_loss_type", "enable_vllm_is_correction", "vllm_is_correction_type",
                  "vllm_is_truncated_threshold", "rejection", "is_batch_normalize", *method_params()}
LIST_VALUED = {"rejection"}
# Reasons the CLI words by argparse or for flags: the library refuses the same input in its own words.
WORDED_BY_THE_CLI = ("invalid choice", "takes one value", "is not a value", "has no effect without --")
# Needs of a run, not of the loss's configuration: the data arrives per call, and forward refuses a
# call without it (tests/models), so the constructor cannot.
RUN_LEVEL = ("add --vllm_logprobs_topk K",)


def _value(token: str):
    if token == "none":
        return None
    try:
        return float(token)
    except ValueError:
        return token


def loss_kwargs(argv):
    """The PolicyLoss keyword arguments a command line sets, or None when it sets anything else."""
    out, i = {}, 0
    while i < len(argv):
        if not argv[i].startswith("--"):
            return None
        flag = argv[i][2:]
        name = UPSTREAM_LOSS_FLAGS.get(flag, flag)
        if name not in OUR_LOSS_FLAGS and name not in UPSTREAM_LOSS_FLAGS.values():
            return None
        j = i + 1
        while j < len(argv) and not argv[j].startswith("--"):
            j += 1
        values = [_value(v) for v in argv[i + 1:j]]
        if not values:
            out[name] = True
        elif len(values) == 1 and name not in LIST_VALUED:
            out[name] = values[0]
        else:
            out[name] = values
        i = j
    return out


LOSS_ONLY = [(argv, message, loss_kwargs(argv)) for argv, message in BAD_INPUT
             if loss_kwargs(argv) is not None and message not in RUN_LEVEL]


def test_the_bad_input_list_holds_enough_loss_only_command_lines():
    assert len(LOSS_ONLY) >= 20


@pytest.mark.parametrize("argv,message,kwargs", LOSS_ONLY, ids=[m for _, m, _ in LOSS_ONLY])
def test_the_library_refuses_what_the_cli_refuses_for_the_same_reason(argv, message, kwargs):
    with pytest.raises(ValueError) as refused:
        PolicyLoss(**kwargs)
    if not any(worded in message for worded in WORDED_BY_THE_CLI):
        assert message.replace("--", "") in str(refused.value), (message, str(refused.value))


def test_the_run_level_entries_are_in_the_bad_input_list():
    """RUN_LEVEL names CLI refusals; an entry renamed there must not silently leave the comparison."""
    assert all(any(m == reason for _, m in BAD_INPUT) for reason in RUN_LEVEL)


def test_loss_kwargs_reads_switches_lists_and_none():
    assert loss_kwargs(["--enable_vllm_is_correction", "--vllm_is_truncated_threshold", "2", "1"]) == {
        "enable_vllm_is_correction": True, "vllm_is_truncated_threshold": [2.0, 1.0]}
    assert loss_kwargs(["--trm_max_delta", "none", "--rejection", "k2:1"]) == {
        "trm_max_delta": None, "rejection": ["k2:1"]}
    assert math.isnan(loss_kwargs(["--sapo_tau_pos", "nan"])["sapo_tau_pos"])
    assert loss_kwargs(["--rollout.batch_size", "8"]) is None
