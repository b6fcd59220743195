"""``--vllm_dtype {auto,bfloat16,float16}``: the dtype the vLLM engines are created with.

Upstream 0.11.2's ``create_vllm_engines`` hard-codes ``dtype="bfloat16"``, while the trainer
broadcasts its weights in ``--ds.param_dtype`` and the engine's ``WorkerWrap.update_weight``
asserts that the two dtypes are equal. So upstream's fp16 training with vLLM fails at the first
weight sync; ``auto`` (the default) creates the engines in the trainer's dtype, and an explicit
dtype that differs from ``--ds.param_dtype`` is rejected before Ray. FP16 on both sides removes
most of the rollout/training mismatch (Qi et al., *Defeating the Training-Inference Mismatch via
FP16*, arXiv 2510.26788).

The dtype is set where ``create_vllm_engines`` creates each engine: the ``options(...).remote``
of ``RolloutRayActor`` (``with_engine_dtype``, listed in ``patch_table.PATCHES``).
"""

from __future__ import annotations

import functools

VLLM_DTYPES = ("auto", "bfloat16", "float16")
ENGINE_DTYPE_OF_PARAM_DTYPE = {"bf16": "bfloat16", "fp16": "float16"}  # --ds.param_dtype choices


def resolve_engine_dtype(vllm_dtype: str, param_dtype: str) -> str:
    """The engines' dtype for ``--vllm_dtype`` and ``--ds.param_dtype``; ValueError on a contradiction."""
    if vllm_dtype not in VLLM_DTYPES:
        raise ValueError(f"--vllm_dtype must be one of {list(VLLM_DTYPES)}, got {vllm_dtype!r}")
    if param_dtype not in ENGINE_DTYPE_OF_PARAM_DTYPE:
        raise ValueError(f"--ds.param_dtype must be one of {list(ENGINE_DTYPE_OF_PARAM_DTYPE)}, got {param_dtype!r}")
    trainer_dtype = ENGINE_DTYPE_OF_PARAM_DTYPE[param_dtype]
    if vllm_dtype == "auto":
        return trainer_dtype
    if vllm_dtype != trainer_dtype:
        raise ValueError(
            f"--vllm_dtype {vllm_dtype} contradicts --ds.param_dtype {param_dtype}: the trainer broadcasts "
            f"{trainer_dtype} weights and the engines accept only their own dtype; use --vllm_dtype auto"
        )
    return trainer_dtype


def with_engine_dtype(options, dtype: str):
    """``RolloutRayActor.options`` whose ``.remote(**kwargs)`` creates the engine in ``dtype``."""

    @functools.wraps(options)
    def wrapped(*args, **kwargs):
        inner = options(*args, **kwargs)

        class _Options:
            def remote(self, *engine_args, **engine_kwargs):
                engine_kwargs["dtype"] = dtype
                return inner.remote(*engine_args, **engine_kwargs)

        return _Options()

    return wrapped


def engine_dtype_options(original, settings):
    """The patch-table factory ((original, settings) -> replacement) of ``with_engine_dtype``."""
    return with_engine_dtype(original, settings.engine_dtype)
