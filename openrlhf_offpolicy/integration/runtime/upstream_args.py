"""What this project reads from upstream ``openrlhf.cli.train_ppo_ray`` (0.11.2) arguments.

Upstream's parser is built inside its ``__main__`` block and importing the module costs seconds
(vLLM, DeepSpeed, Ray), so bad flags are caught first from a handful of upstream flags read here
with their upstream defaults (``peek_upstream_args``); the authoritative check repeats on the
arguments upstream's own parser produced. ``tests/integration/runtime/test_upstream_args.py`` asserts that
these names and defaults still match upstream's parser. Imports nothing from OpenRLHF.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any, Dict, List, Sequence

# flag -> argparse keyword arguments, exactly as upstream 0.11.2 declares them.
PEEKED_FLAGS: Dict[str, Dict[str, Any]] = {
    "--vllm.num_engines": dict(type=int, default=None),
    "--actor.model_name_or_path": dict(type=str, default=None),
    "--actor.policy_loss_type": dict(type=str, default="ppo"),
    "--actor.eps_clip": dict(type=float, default=0.2),
    "--actor.eps_clip_low_high": dict(type=float, nargs=2, default=None),
    "--actor.dual_clip": dict(type=float, default=None),
    "--actor.loss_agg_mode": dict(type=str, default="token-mean"),
    "--algo.advantage.is_correction_level": dict(type=str, default="off"),
    "--algo.advantage.is_correction_mode": dict(type=str, default="mask"),
    "--algo.advantage.is_correction_gating": dict(type=str, default="ratio"),
    "--algo.advantage.is_correction_threshold": dict(type=float, nargs="+", default=[0.5, 5.0]),
    "--train.agent_func_path": dict(type=str, default=None),
    "--ds.ring_attn_size": dict(type=int, default=1),
    "--rollout.top_p": dict(type=float, default=1.0),
    "--ds.param_dtype": dict(type=str, default="bf16"),  # --vllm_dtype auto follows it
    "--logger.wandb.group": dict(type=str, default=None),
    "--logger.wandb.run_name": dict(type=str, default=None),
    # reinforce_max checks
    "--rollout.n_samples_per_prompt": dict(type=int, default=1),
    "--algo.kl.init_coef": dict(type=float, default=0.01),
    "--algo.kl.use_loss": dict(action="store_true", default=False),
}


def hierarchical(flat: Dict[str, Any]) -> SimpleNamespace:
    """``{"a.b": 1}`` -> ``ns.a.b == 1``, the shape upstream's ``hierarchize`` gives its args."""
    root: Dict[str, Any] = {}
    for key, value in flat.items():
        node = root
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    def build(node):
        return SimpleNamespace(**{k: build(v) for k, v in node.items()}) if isinstance(node, dict) else node

    return build(root)


def peek_upstream_args(argv: Sequence[str]) -> SimpleNamespace:
    """The peeked upstream flags from ``argv`` (everything else ignored), hierarchical."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag, kwargs in PEEKED_FLAGS.items():
        parser.add_argument(flag, **kwargs)
    known, _ = parser.parse_known_args(list(argv))
    return hierarchical(vars(known))


def given_flags(argv: Sequence[str]) -> List[str]:
    """Flags present in ``argv`` (``--x v`` and ``--x=v`` forms), in order."""
    return [tok.split("=", 1)[0] for tok in argv if tok.startswith("--")]


def loss_kwargs_from_args(args) -> Dict[str, Any]:
    """The kwargs upstream's ``ActorPPOTrainer.__init__`` passes to ``PolicyLoss``."""
    low_high = args.actor.eps_clip_low_high or (args.actor.eps_clip, args.actor.eps_clip)
    adv = args.algo.advantage
    return dict(
        clip_eps_low=low_high[0],
        clip_eps_high=low_high[1],
        dual_clip=args.actor.dual_clip,
        token_level_loss=args.actor.loss_agg_mode == "token-mean",
        policy_loss_type=args.actor.policy_loss_type,
        is_correction_level=adv.is_correction_level,
        is_correction_mode=adv.is_correction_mode,
        is_correction_gating=adv.is_correction_gating,
        is_correction_threshold=list(adv.is_correction_threshold),
    )


def vllm_enabled(args) -> bool:
    return bool(args.vllm.num_engines)
