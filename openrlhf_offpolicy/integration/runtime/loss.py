"""The ``PolicyLoss`` upstream's ``ActorPPOTrainer`` builds once our patches are installed.

``policy_loss_class(settings)`` returns a subclass of our drop-in ``PolicyLoss`` built from the run's
one ``OffPolicyConfig`` (``settings.config_for``: the kwargs the trainer passes must be those the
driver resolved it with). Its ``statistics`` reach upstream's logged
status through the ``training_step`` / ``ppo_train`` wrappers (``wrappers``), exact over the step.
While a micro-batch is trained, ``experience_info`` is that micro-batch's ``experience.info``.
With ``--vllm_logprobs_topk`` the loss also receives the micro-batch's top-K data (``PENDING``), and with
``--a3po_alpha versions`` each sample's policy-version lag (``experience.info``, ``policy_versions``).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Optional

import torch

from ...corrections.metrics import Mean
from ...models.loss import PolicyLoss
from .policy_versions import VERSION_LAG_KEY
from .settings import OffPolicySettings


@dataclass
class PendingTopK:
    """The top-K inputs of one training micro-batch, filled in by the actor's forward."""

    ids: torch.Tensor  # [B, A, K]
    rollout_log_probs: torch.Tensor  # [B, A, K]
    action_ids: torch.Tensor  # [B, A]
    log_probs: Optional[torch.Tensor] = None  # [B, A, K], pi_theta at the ids

    @classmethod
    def from_experience(cls, experience) -> "PendingTopK":
        num_actions = experience.action_mask.shape[1]
        return cls(
            ids=experience.rollout_topk_ids.transpose(1, 2),
            rollout_log_probs=experience.rollout_topk_log_probs.transpose(1, 2),
            action_ids=experience.sequences[:, 1:][:, -num_actions:],
        )

    def loss_kwargs(self) -> dict:
        if self.log_probs is None:
            raise RuntimeError("the actor forward did not gather the top-K log-probs of this micro-batch")
        return dict(rollout_topk_ids=self.ids, rollout_topk_log_probs=self.rollout_log_probs,
                    topk_log_probs=self.log_probs, action_ids=self.action_ids)


# The top-K data of the micro-batch being trained (set around ActorPPOTrainer.training_step).
PENDING: contextvars.ContextVar = contextvars.ContextVar("openrlhf_offpolicy_pending_topk", default=None)


class OpenRLHFPolicyLoss(PolicyLoss):
    settings: OffPolicySettings = OffPolicySettings()

    def __init__(self, **upstream_kwargs) -> None:
        # The driver resolved the one configuration; upstream's kwargs must be those it was resolved with.
        super().__init__(config=self.settings.config_for(upstream_kwargs))
        self.experience_info: Optional[dict] = None

    def forward(self, log_probs, old_log_probs, advantages, action_mask=None, *args, **kwargs):
        pending = PENDING.get()
        if pending is not None:
            kwargs.update(pending.loss_kwargs())
        info = self.experience_info or {}
        if self.settings.needs_version_lag and VERSION_LAG_KEY in info:
            kwargs["policy_version_lag"] = info[VERSION_LAG_KEY]
        excluded = None
        if self.settings.match_rollout_sampling:
            excluded = excluded_tokens(log_probs, old_log_probs, action_mask)
        out = super().forward(log_probs, old_log_probs, advantages, action_mask, *args, **kwargs)
        self._excluded = excluded
        return out

    @property
    def statistics(self):
        stats = super().statistics
        excluded = getattr(self, "_excluded", None)
        if excluded is not None and "sampling/excluded_token_frac" not in stats:
            stats["sampling/excluded_token_frac"] = Mean(total=excluded[0], count=excluded[1])
        return stats


def excluded_tokens(log_probs: torch.Tensor, old_log_probs: torch.Tensor, action_mask) -> tuple:
    """(action tokens whose pi_theta or pi_old is exactly 0 under the matched truncation, action tokens).

    With ``--match_rollout_sampling`` a log-prob of -inf means the token the rollout sampled lies
    outside the trainer's kept set (the two samplers' kept sets differ at the boundary, see
    ``models.logprobs``). The loss masks such a token like any non-finite input
    (``loss/nonfinite_frac``); ``sampling/excluded_token_frac`` counts it separately."""
    with torch.no_grad():
        outside = torch.isneginf(log_probs.detach()) | torch.isneginf(old_log_probs.detach())
        mask = torch.ones_like(outside, dtype=torch.float32) if action_mask is None else (action_mask > 0).float()
        return (outside.float() * mask).sum().cpu(), mask.sum().cpu()


def policy_loss_class(settings: OffPolicySettings) -> type:
    """A ``PolicyLoss`` class carrying ``settings``, to stand in for upstream's class."""
    return type("PolicyLoss", (OpenRLHFPolicyLoss,), {"settings": settings, "__module__": __name__})
