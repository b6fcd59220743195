"""Shared material of the attack suite (tests/*/test_hostile_*.py): every accepted ``PolicyLoss``
configuration, derived from the registry, and inputs for it (top-K included where a method reads it)."""

from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Dict, List

import torch
from helpers import random_inputs

from openrlhf_offpolicy.corrections import CORRECTIONS, POLICY_LOSSES, method_params, resolve_config

# A band each correction reads the way its registration says (ratio band or divergence bound).
BAND = {"ratio": (0.5, 5.0), "divergence": (0.0, 0.02), None: (0.5, 5.0)}
UPSTREAM_GATES = [
    dict(is_correction_level="token", is_correction_mode="clip"),
    dict(is_correction_level="token", is_correction_mode="mask"),
    dict(is_correction_level="seq", is_correction_mode="mask"),
    dict(is_correction_level="token", is_correction_gating="binary_kl", is_correction_threshold=[0.0, 0.01]),
    dict(is_correction_level="seq", is_correction_gating="binary_kl", is_correction_threshold=[0.0, 0.01]),
    dict(is_correction_level="token", is_correction_gating="tv", is_correction_threshold=[0.0, 0.05]),
    dict(is_correction_level="seq", is_correction_gating="tv", is_correction_threshold=[0.0, 0.05]),
]
EXTRAS = [
    {},
    {"token_level_loss": False},
    {"rejection": ("seq_max_k2:0.5", "token_k1:-3:3")},
    {"is_batch_normalize": True},
]


def _choice_variants() -> List[Dict[str, str]]:
    """One kwargs dict per choice of every string-valued method parameter (kernels, divergences, ...)."""
    out = []
    for p in method_params().values():
        if p.choices is not None:
            out += [{p.name: choice} for choice in p.choices() if choice != p.default]
    return out


@lru_cache(maxsize=None)
def _configurations() -> tuple:
    corrections = [{}] + [
        dict(enable_vllm_is_correction=True, vllm_is_correction_type=c,
             vllm_is_truncated_threshold=BAND[CORRECTIONS.get(c).threshold])
        for c in CORRECTIONS.names(hidden=False)
    ] + UPSTREAM_GATES
    params = [{}] + _choice_variants()
    out, seen = [], set()
    for loss, corr, extra, param in itertools.product(POLICY_LOSSES.names(), corrections, EXTRAS, params):
        kwargs = {"policy_loss_type": loss, **corr, **extra, **param}
        try:
            config = resolve_config(**kwargs)
        except ValueError:
            continue
        if param and not any(name in (config.loss_entry.params + config.correction_entry.params)
                             for name in param) and not _reads(config, param):
            continue  # a parameter of a method this configuration does not use: same as without it
        key = repr(sorted(config.describe().items()))
        if key not in seen:
            seen.add(key)
            out.append(kwargs)
    return tuple(out)


def _reads(config, param) -> bool:
    names = {p.name for e in (config.loss_entry, config.correction_entry) for p in e.params}
    return any(name in names for name in param)


def configurations() -> List[dict]:
    """Every distinct accepted configuration: loss x correction (ours and upstream's gates) x
    {plain, sequence-mean aggregation, rejection, batch-normalised} x each choice of a method's
    string parameter (kernels, divergences, references)."""
    return [dict(c) for c in _configurations()]


def config_id(kwargs: dict) -> str:
    return "-".join(f"{v}" if not isinstance(v, bool) else k for k, v in kwargs.items()
                    if k not in ("enable_vllm_is_correction", "vllm_is_truncated_threshold", "is_correction_threshold"))


def loss_inputs(kwargs: dict, seed: int = 0, batch: int = 4, length: int = 6, dtype=torch.float32, k: int = 3):
    """``PolicyLoss.forward`` inputs for a configuration (top-K inputs when its divergence reads them)."""
    inputs = random_inputs(batch=batch, length=length, seed=seed, dtype=dtype)
    config = resolve_config(**kwargs)
    if config.needs_topk:
        inputs.update(topk_inputs(inputs, k=k, seed=seed))
    return inputs


def topk_inputs(inputs: dict, k: int = 3, seed: int = 0, vocab: int = 50) -> dict:
    g = torch.Generator().manual_seed(seed + 1)
    batch, length = inputs["log_probs"].shape
    ids = torch.stack([torch.randperm(vocab, generator=g)[:k] for _ in range(batch * length)]).view(batch, length, k)
    rollout = torch.log_softmax(torch.randn(batch, length, vocab, generator=g), dim=-1)
    policy = torch.log_softmax(torch.randn(batch, length, vocab, generator=g), dim=-1)
    dtype = inputs["log_probs"].dtype
    return {
        "rollout_topk_ids": ids,
        "rollout_topk_log_probs": rollout.gather(-1, ids).to(dtype),
        "topk_log_probs": policy.gather(-1, ids).to(dtype),
        "action_ids": ids[..., 0],
    }
