"""``--routing_replay`` checks on upstream arguments, run before Ray (no OpenRLHF import)."""

from __future__ import annotations

import json
import os

MODES = ("off", "r2", "r3")


def model_config_file(path: str):
    """The ``config.json`` of ``--actor.model_name_or_path`` if it is on this machine (None if not):
    a local directory's, or a hub name's in the local Hugging Face cache.

    The cache is read with ``huggingface_hub.try_to_load_from_cache`` (the lookup ``transformers``'
    ``AutoConfig.from_pretrained(..., local_files_only=True)`` does, without importing torch), so
    nothing is downloaded; a hub model not cached here is checked at the actor's first forward.
    """
    if not path:
        return None
    local = os.path.join(path, "config.json")
    if os.path.isfile(local):
        return local
    if os.path.isdir(path) or path.count("/") > 1 or path.startswith((".", "/", "~")):
        return None  # a local path without a config.json, not a hub name
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        cached = try_to_load_from_cache(path, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return cached if isinstance(cached, str) and os.path.isfile(cached) else None


def unchecked_model_note(mode: str, args):
    """A one-line note when routing replay is on but the model's config is not on this machine."""
    if mode == "off" or model_config_file(args.actor.model_name_or_path):
        return None
    return (f"--routing_replay {mode}: the config of {args.actor.model_name_or_path} is not on this machine "
            "(not a local directory, not in the Hugging Face cache), so whether it is a supported MoE model is "
            "checked at the actor's first forward")


def check_routing_replay(mode: str, args, logprobs_topk: int = 0, bypass_old_logprobs: bool = False) -> None:
    """One-line ValueError for a combination routing replay does not serve.

    A dense or unsupported model is caught here when the config of ``--actor.model_name_or_path``
    is on this machine (``model_config_file``); otherwise at actor start (``RoutingReplay``
    refuses it).
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
    if mode == "r2" and bypass_old_logprobs:
        raise ValueError(f"{flag} records the routing in the actor's old-log-prob forward, which "
                         "--bypass_old_logprobs skips; use --routing_replay r3 (the rollout's routing) with it")
    config_file = model_config_file(args.actor.model_name_or_path)
    if config_file:
        try:
            with open(config_file) as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{flag}: cannot read {config_file}: {e}") from None
        from ...models.routing_replay import RoutingReplayError, check_config  # torch: only for a local model

        try:
            check_config(config)
        except RoutingReplayError as e:
            raise ValueError(f"{flag}: {e}") from None
