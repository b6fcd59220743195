"""The wandb config of a run, filterable: upstream's sections as nested dicts, our resolved settings.

Upstream 0.11.2's ``WandbLogger.__init__`` calls ``wandb.init(config=args.__dict__)``: its sections
(``actor``, ``algo``, ...) are ``SimpleNamespace`` objects, which wandb stores as strings, and our
``args.offpolicy`` is the raw settings (``policy_loss_type`` None for a preset run). The patched
``__init__`` hands upstream a view of ``args`` whose ``__dict__`` holds nested dicts (secrets
redacted) and, under ``offpolicy``, the settings plus the resolved ``PolicyLoss`` configuration
(preset values filled in); attribute reads (``args.logger.wandb.key``) still reach the real values.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, is_dataclass
from types import SimpleNamespace
from typing import Any, Dict

from .redaction import REDACTED, is_secret_flag, redact_value



class Section(dict):
    """A config section: dict items for wandb, attribute reads from the real namespace."""

    __slots__ = ("_source",)

    def __init__(self, items: Dict[str, Any], source: Any):
        super().__init__(items)
        object.__setattr__(self, "_source", source)

    def __getattr__(self, name: str):
        return getattr(object.__getattribute__(self, "_source"), name)


def _is_namespace(value: Any) -> bool:
    return isinstance(value, SimpleNamespace) or type(value).__name__ == "Namespace"


def _section(namespace: Any, prefix: str) -> Section:
    items: Dict[str, Any] = {}
    for key, value in vars(namespace).items():
        name = f"{prefix}{key}"
        if _is_namespace(value):
            items[key] = _section(value, name + ".")
        elif value not in (None, "", [], False) and is_secret_flag(name):
            items[key] = REDACTED
        else:
            items[key] = redact_value(value)  # URL user-info and credential query parameters
    return Section(items, namespace)


def offpolicy_config(args) -> Dict[str, Any]:
    """Our settings and the resolved PolicyLoss configuration (what the run actually uses)."""
    settings = getattr(args, "offpolicy", None)
    if settings is None:
        return {}
    fields = asdict(settings) if is_dataclass(settings) else dict(vars(settings))
    # the resolved configuration is logged once, typed and flat, under "policy_loss"
    out: Dict[str, Any] = {"settings": {k: v for k, v in fields.items() if k not in ("loss_config", "resolved_from")}}
    try:
        out["policy_loss"] = settings.config().describe()
    except Exception as e:  # the driver validated the settings; never let logging stop a run
        out["policy_loss"] = {"error": str(e)}
    return out


def config_view(args) -> SimpleNamespace:
    """``args`` as upstream's WandbLogger should see it (see the module docstring)."""
    view = _section(args, "")
    items = dict(view)
    items["offpolicy"] = redact_value(offpolicy_config(args))
    out = SimpleNamespace(**items)
    return out


def wandb_logger_init(original, settings):
    """Patch-table factory for ``openrlhf.utils.logging_utils.WandbLogger.__init__``."""

    @functools.wraps(original)
    def init(self, args, *rest, **kwargs):
        return original(self, config_view(args), *rest, **kwargs)

    return init
