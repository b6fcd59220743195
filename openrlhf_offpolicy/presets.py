"""The registered methods' presets as ``PolicyLoss`` keyword arguments (for the lab and the bench).

Each registration names its preset (``configs/*.yaml``); a preset is read exactly as
``train_ppo_ray --config`` reads it, and the kwargs are those the run's ``PolicyLoss`` would get
(upstream's clip / aggregation flags included), so the lab and the bench list every registered
method without a hand-kept table.
"""

from __future__ import annotations

import os
from typing import Dict


def preset_loss_kwargs(path: str) -> dict:
    """``PolicyLoss`` kwargs of the run a preset describes (``configs/NAME.yaml`` or a file path)."""
    from .cli.config_file import packaged_file
    from .cli.train_ppo_ray import build_parser, config_tokens, settings_from
    from .integration.runtime.upstream_args import loss_kwargs_from_args, peek_upstream_args

    # a registry preset reads the packaged file, whatever the working directory holds
    tokens = config_tokens(packaged_file(path) or path)
    ours, upstream = build_parser().parse_known_args(tokens)
    settings = settings_from(ours)
    kwargs = loss_kwargs_from_args(peek_upstream_args(upstream))
    if settings.policy_loss_type is not None:
        kwargs["policy_loss_type"] = settings.policy_loss_type
    kwargs.update(settings.loss_kwargs)
    return kwargs


def registered_presets() -> Dict[str, dict]:
    """``{preset name: PolicyLoss kwargs}`` for every preset of every registered method, in registry order."""
    from .corrections import CORRECTIONS, POLICY_LOSSES

    out: Dict[str, dict] = {}
    for entry in list(POLICY_LOSSES) + list(CORRECTIONS):
        for path in (entry.preset, *entry.variants):
            if path:
                out[os.path.basename(path)[: -len(".yaml")]] = preset_loss_kwargs(path)
    return out
