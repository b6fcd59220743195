"""The upstream flags we peek at still have upstream 0.11.2's names and defaults."""

from helpers import MINIMAL_UPSTREAM_ARGV

from openrlhf_offpolicy.integration.driver.launch import run
from openrlhf_offpolicy.integration.runtime.settings import OffPolicySettings
from openrlhf_offpolicy.integration.runtime.upstream_args import (
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


def upstream_policy_loss_call():
    """The ``PolicyLoss(...)`` call in upstream's ``ActorPPOTrainer.__init__``, as an AST node."""
    import ast
    import inspect
    import textwrap

    from openrlhf.trainer.ray import ppo_actor

    tree = ast.parse(textwrap.dedent(inspect.getsource(ppo_actor.ActorPPOTrainer.__init__)))
    [call] = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
              and getattr(node.func, "id", None) == "PolicyLoss"]
    return call


def test_loss_kwargs_map_each_flag_as_actor_ppo_trainer_does():
    """Evaluate upstream's own keyword expressions on the args its parser makes, and compare them
    value by value with what we derive from the peeked flags (names and mapping)."""
    import ast
    from types import SimpleNamespace

    argv = MINIMAL_UPSTREAM_ARGV + [
        "--actor.eps_clip_low_high", "0.1", "0.3", "--actor.dual_clip", "3", "--actor.loss_agg_mode",
        "seq-mean-token-mean", "--actor.policy_loss_type", "gspo", "--algo.advantage.is_correction_level", "seq",
        "--algo.advantage.is_correction_mode", "mask", "--algo.advantage.is_correction_gating", "tv",
        "--algo.advantage.is_correction_threshold", "0.0", "0.07"]
    real, _, _ = run(argv, OffPolicySettings(), dry_run=True, explicit_flags=given_flags(argv))
    call = upstream_policy_loss_call()
    scope = {"self": SimpleNamespace(args=real)}
    theirs = {kw.arg: eval(compile(ast.Expression(kw.value), "<upstream>", "eval"), scope) for kw in call.keywords}
    ours = loss_kwargs_from_args(peek_upstream_args(argv))
    assert ours == theirs


def test_peek_ignores_unrelated_flags_and_needs_exact_names():
    args = peek_upstream_args(["--actor.eps_clip_low_high", "0.1", "0.3", "--actor.dual_clip", "3",
                               "--rollout.batch_size", "8", "--vllm.num_engines=4"])
    assert args.actor.eps_clip_low_high == [0.1, 0.3] and args.actor.eps_clip == 0.2
    assert args.actor.dual_clip == 3.0 and args.vllm.num_engines == 4
    assert given_flags(["--a", "1", "--b=2", "x"]) == ["--a", "--b"]
