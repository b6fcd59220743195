"""``--routing_replay`` checks on upstream arguments, run before Ray (no OpenRLHF import)."""

from __future__ import annotations

import json
import os

MODES = ("off", "r2", "r3")


def check_routing_replay(mode: str, args, logprobs_topk: int = 0) -> None:
    """One-line ValueError for a combination routing replay does not serve.

    A dense or unsupported model is caught here when ``--actor.model_name_or_path`` is a local
    directory with a ``config.json``; otherwise at actor start (``RoutingReplay`` refuses it).
    """
    if mode not in MODES:
        raise ValueError(f"--routing_replay must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return
    flag = f"--routing_replay {mode}"
    if mode == "r3" and not args.vllm.num_engines:
        raise ValueError(f"{flag} replays the rollout engine's routing, but vLLM is off (--vllm.num_engines)")
    if args.train.agent_func_path:
        raise ValueError(f"{flag} is not supported with --train.agent_func_path (multi-turn agent rollouts)")
    if args.ds.ring_attn_size > 1:
        raise ValueError(f"{flag} is not supported with ring attention (--ds.ring_attn_size > 1)")
    if logprobs_topk:
        raise ValueError(f"{flag} is not supported together with --vllm_logprobs_topk yet")
    path = args.actor.model_name_or_path
    config_file = os.path.join(path, "config.json") if path else ""
    if os.path.isfile(config_file):
        try:
            with open(config_file) as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{flag}: cannot read {config_file}: {e}") from None
        from ..models.routing_replay import RoutingReplayError, check_config  # torch: only for a local model

        try:
            check_config(config)
        except RoutingReplayError as e:
            raise ValueError(f"{flag}: {e}") from None
