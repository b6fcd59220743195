"""The upstream flags we peek at still have upstream 0.11.2's names and defaults."""

from helpers import MINIMAL_UPSTREAM_ARGV

from openrlhf_offpolicy.integration.launch import run
from openrlhf_offpolicy.integration.settings import OffPolicySettings
from openrlhf_offpolicy.integration.upstream_args import (
    PEEKED_FLAGS,
    given_flags,
    loss_kwargs_from_args,
    peek_upstream_args,
)


def _value(args, dotted):
    for part in dotted.split("."):
        args = getattr(args, part)
    return args


def test_peeked_defaults_equal_what_upstreams_parser_produces():
    argv = [a for a in MINIMAL_UPSTREAM_ARGV]
    argv[argv.index("--vllm.num_engines") + 1] = "3"
    real, _, _ = run(argv, OffPolicySettings(), dry_run=True, explicit_flags=given_flags(argv))
    peeked = peek_upstream_args(argv)
    for flag in PEEKED_FLAGS:
        name = flag[2:]
        if name.startswith("logger.wandb."):
            continue  # we name runs ourselves; only the flag's existence matters
        assert _value(peeked, name) == _value(real, name) or (
            name == "actor.eps_clip_low_high" and _value(real, name) == (0.2, 0.2)
        ), name
    assert hasattr(real.logger.wandb, "group") and hasattr(real.logger.wandb, "run_name")


def test_loss_kwargs_match_what_actor_ppo_trainer_passes():
    import inspect

    from openrlhf.trainer.ray import ppo_actor

    source = inspect.getsource(ppo_actor.ActorPPOTrainer.__init__)
    for kwarg in loss_kwargs_from_args(peek_upstream_args([])):
        assert f"{kwarg}=" in source, f"ActorPPOTrainer no longer passes {kwarg}"


def test_peek_ignores_unrelated_flags_and_needs_exact_names():
    args = peek_upstream_args(["--actor.eps_clip_low_high", "0.1", "0.3", "--actor.dual_clip", "3",
                               "--rollout.batch_size", "8", "--vllm.num_engines=4"])
    assert args.actor.eps_clip_low_high == [0.1, 0.3] and args.actor.eps_clip == 0.2
    assert args.actor.dual_clip == 3.0 and args.vllm.num_engines == 4
    assert given_flags(["--a", "1", "--b=2", "x"]) == ["--a", "--b"]
