"""CUDA-only ``flash_attn`` on the CPU backend: empty modules for what upstream imports at module level.

Standard library only (installed by ``patches.install`` in every process of a ``--smoke_test`` run).
"""

from __future__ import annotations

import types

# What upstream imports from flash-attn at module level. Anything else (e.g. the Triton cross-entropy
# that ``log_probs_from_logits`` tries first) stays an ImportError, so upstream takes its fallback.
FLASH_ATTN_NAMES = {
    "flash_attn": (),
    "flash_attn.utils": (),
    "flash_attn.bert_padding": ("index_first_axis", "pad_input", "rearrange", "unpad_input"),
    "flash_attn.utils.distributed": ("all_gather",),
}


class _Placeholder:
    """Stands for a missing ``flash_attn`` function: importing works, calling says what is missing."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.name} needs flash-attn, which is not installed: the CPU backend runs without "
                           "--ds.packing_samples and ring attention")


class _FlashAttnPlaceholders:
    """A meta-path finder: ``import flash_attn...`` gives placeholder modules when flash-attn is absent.

    Upstream's ``openrlhf.models`` imports ``flash_attn.bert_padding`` at import time but computes
    with it only for packed samples, which the CPU backend turns off.
    """

    def find_spec(self, name, path=None, target=None):
        import importlib.machinery

        if name not in FLASH_ATTN_NAMES:
            return None
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        for attr in FLASH_ATTN_NAMES.get(spec.name, ()):
            setattr(module, attr, _Placeholder(f"{spec.name}.{attr}"))
        return module

    def exec_module(self, module):
        return None


def install_flash_attn_placeholder() -> bool:
    """Install the placeholder finder when flash-attn is not installed; True if installed."""
    import importlib.util
    import sys

    if any(isinstance(f, _FlashAttnPlaceholders) for f in sys.meta_path):
        return True
    if importlib.util.find_spec("flash_attn") is not None:
        return False
    sys.meta_path.append(_FlashAttnPlaceholders())
    return True

