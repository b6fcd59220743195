"""``torch``, imported on first use.

The method modules read ``torch`` only inside their functions, so importing them (for their
registrations: names, parameters, checks) does not import torch. The CLI validates a command line
from the registrations alone and answers bad input before torch's ~1.5 s import.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any


class _DeferredTorch:
    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        module = sys.modules.get("torch")
        if module is None:
            module = importlib.import_module("torch")
        return getattr(module, name)

    def __repr__(self) -> str:
        return "<torch, imported on first use>"


torch = _DeferredTorch()
