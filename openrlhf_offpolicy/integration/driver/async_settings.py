"""Checks of ``--max_staleness``, ``--bypass_old_logprobs`` and ``--vllm_dtype`` against upstream args.

Called by ``OffPolicySettings.check`` (so on the peeked flags before anything heavy, and again on
upstream's parsed arguments); each problem is one ``ValueError`` line.
"""

from __future__ import annotations

from ..runtime.bypass import bypass_rejection
from ..runtime.engine_dtype import resolve_engine_dtype
from ..runtime.upstream_args import vllm_enabled


def check_async_settings(settings, config, args) -> None:
    vllm = vllm_enabled(args)
    if settings.max_staleness is not None:
        if not isinstance(settings.max_staleness, int) or settings.max_staleness < 0:
            raise ValueError(f"--max_staleness must be an integer >= 0, got {settings.max_staleness!r}")
        if not vllm:
            raise ValueError("--max_staleness needs vLLM rollouts (--vllm.num_engines); "
                             "without them no sample is stale")
    if settings.bypass_old_logprobs:
        if not vllm:
            raise ValueError("--bypass_old_logprobs uses the rollout log-probs that only vLLM engines produce, "
                             "but vLLM is off (--vllm.num_engines is unset or 0)")
        reason = bypass_rejection(config)
        if reason:
            raise ValueError(reason)
    if settings.vllm_dtype != "auto" and not vllm:
        raise ValueError(f"--vllm_dtype {settings.vllm_dtype} has no effect without vLLM engines (--vllm.num_engines)")
    resolved = resolve_engine_dtype(settings.vllm_dtype, args.ds.param_dtype)
    if settings.engine_dtype is not None and settings.engine_dtype != resolved:
        raise ValueError(f"engine dtype {settings.engine_dtype} does not match --vllm_dtype {settings.vllm_dtype} "
                         f"with --ds.param_dtype {args.ds.param_dtype} ({resolved})")
