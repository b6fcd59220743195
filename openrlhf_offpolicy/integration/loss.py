"""The ``PolicyLoss`` upstream's ``ActorPPOTrainer`` builds once our patches are installed.

``policy_loss_class(settings)`` returns a subclass of our drop-in ``PolicyLoss`` that adds the
run's settings to the upstream kwargs the trainer passes, and that copies its metrics into the
``experience.info`` of the micro-batch being trained (``patches`` points ``experience_info`` at it
around every ``training_step``), so upstream logs them to wandb/tensorboard with its own metrics.
"""

from __future__ import annotations

from typing import Optional

from ..models.loss import PolicyLoss
from .settings import OffPolicySettings


class OpenRLHFPolicyLoss(PolicyLoss):
    settings: OffPolicySettings = OffPolicySettings()

    def __init__(self, **upstream_kwargs) -> None:
        super().__init__(**upstream_kwargs, **self.settings.loss_kwargs)
        self.experience_info: Optional[dict] = None

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        if self.experience_info is not None:
            self.experience_info.update(self.metrics)
        return out


def policy_loss_class(settings: OffPolicySettings) -> type:
    """A ``PolicyLoss`` class carrying ``settings``, to stand in for upstream's class."""
    return type("PolicyLoss", (OpenRLHFPolicyLoss,), {"settings": settings, "__module__": __name__})
