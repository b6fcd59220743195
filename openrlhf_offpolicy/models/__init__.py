"""Drop-in replacements for ``openrlhf.models`` classes (no OpenRLHF import)."""

from .loss import PolicyLoss

__all__ = ["PolicyLoss"]
