"""``PolicyLoss``: a drop-in for ``openrlhf.models.loss.PolicyLoss`` (OpenRLHF 0.11.2).

Same constructor kwargs (plus the seed-style correction API and every method parameter, see
``corrections.config``), same ``forward`` arguments, same 5-tuple
``(loss, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio)``. With only upstream kwargs the outputs
and gradients equal upstream's. After every call ``self.statistics`` holds every metric of the
micro-batch as a statistic that reduces exactly over a training step (``corrections.metrics``),
including upstream's ``ppo_clip_ratio`` / ``ppo_kl`` / ``vllm_kl`` / ``is_filter_ratio``, and
``self.metrics`` the diagnostics' values on this micro-batch as detached 0-d tensors. Nothing here
imports OpenRLHF.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn

from ..corrections import CORRECTIONS, POLICY_LOSSES, TopK, aggregate_loss, make_topk, resolve_config
from ..corrections.batch import make_policy_batch
from ..corrections.diagnostics import correction_metrics, filter_ratio, mismatch_metrics
from ..corrections.metrics import Mean, Statistic, as_statistic, token_mean


TOPK_ARGUMENTS = ("rollout_topk_ids", "rollout_topk_log_probs", "topk_log_probs", "action_ids")
# Upstream 0.11.2's constructor order, so positional calls keep working.
# Upstream's own outputs (training_step logs them under these names), kept out of ``metrics``.
UPSTREAM_OUTPUTS = ("ppo_clip_ratio", "ppo_kl", "vllm_kl", "is_filter_ratio")
UPSTREAM_POSITIONAL = ("clip_eps_low", "clip_eps_high", "dual_clip", "token_level_loss", "policy_loss_type",
                       "is_correction_level", "is_correction_mode", "is_correction_gating", "is_correction_threshold")


class PolicyLoss(nn.Module):
    """Policy loss with rollout/training mismatch corrections.

    forward pipeline: ratios -> surrogate -> correction coefficient -> aggregation -> metrics.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        if len(args) > len(UPSTREAM_POSITIONAL):
            raise TypeError(f"PolicyLoss takes at most {len(UPSTREAM_POSITIONAL)} positional arguments")
        for name, value in zip(UPSTREAM_POSITIONAL, args):
            if name in kwargs:
                raise TypeError(f"PolicyLoss got multiple values for argument {name!r}")
            kwargs[name] = value
        self.config = resolve_config(**kwargs)
        self.surrogate = POLICY_LOSSES.get(self.config.policy_loss_type).fn
        self.correction = CORRECTIONS.get(self.config.correction).fn
        self.metrics: Dict[str, torch.Tensor] = {}
        self.statistics: Dict[str, Statistic] = {}
        # Without a correction upstream's loss never reads pi_roll: a bad value must not drop a token.
        self.rollout_in_loss = (self.config.needs_rollout_log_probs
                                or POLICY_LOSSES.get(self.config.policy_loss_type).reads_rollout)
        # Upstream attribute names, for code that reads them off the module.
        self.policy_loss_type = self.config.policy_loss_type
        self.token_level_loss = self.config.token_level_loss
        self.clip_eps_low = self.config.clip_eps_low
        self.clip_eps_high = self.config.clip_eps_high
        self.dual_clip = self.config.dual_clip

    def forward(
        self,
        log_probs: torch.Tensor,
        old_log_probs: torch.Tensor,
        advantages: torch.Tensor,
        action_mask: Optional[torch.Tensor] = None,
        rollout_log_probs: Optional[torch.Tensor] = None,
        dp_size: int = 1,
        batch_num_tokens: Optional[float] = None,
        global_batch_size: Optional[float] = None,
        **extra,
    ):
        """Upstream's arguments, plus the top-K inputs of the top-K divergences (SPEC §3.3):
        ``rollout_topk_ids`` / ``rollout_topk_log_probs`` ``[B, T, K]`` (the rollout's top-K),
        ``topk_log_probs`` ``[B, T, K]`` (pi_theta at those ids) and ``action_ids`` ``[B, T]``."""
        topk = self._topk(log_probs, extra)
        if rollout_log_probs is None and self.config.needs_rollout_log_probs:
            raise ValueError(
                f"the {self.config.correction if self.config.correction_enabled else 'rollout-anchored'} "
                f"correction of policy_loss_type={self.config.policy_loss_type!r} needs rollout_log_probs "
                "(pi_roll), but none were passed"
            )
        batch, action_mask, nonfinite = make_policy_batch(
            log_probs, old_log_probs, advantages, action_mask, rollout_log_probs,
            topk if self.config.needs_topk else None, rollout_in_loss=self.rollout_in_loss,
        )

        surrogate = self.surrogate(batch, self.config)
        correction = self.correction(batch, self.config)
        per_token = surrogate.loss * correction.coef  # coef is 0 off the mask and on non-finite tokens
        loss = aggregate_loss(
            per_token, action_mask, self.config.token_level_loss, dp_size, batch_num_tokens, global_batch_size
        )

        with torch.no_grad():
            stats = {
                "ppo_clip_ratio": token_mean(surrogate.clipped & batch.on, batch.mask),
                "ppo_kl": token_mean(batch.old_log_probs - batch.log_probs.detach(), batch.mask),
                "loss/nonfinite_frac": Mean(total=torch.tensor(float(nonfinite)), count=action_mask.sum()),
            }
            stats.update(surrogate.metrics)
            if batch.rollout_log_probs is not None:
                stats.update(mismatch_metrics(batch))
                if not self.rollout_in_loss:
                    stats["mismatch/nonfinite_frac"] = token_mean(batch.mask - batch.rollout_on, batch.mask)
            if self.config.correction_enabled:
                stats.update(correction_metrics(correction, batch))
                stats.update(correction.metrics)
                stats["vllm_kl"] = stats["mismatch/k1"]  # mean(log pi_roll - log pi_old), upstream's vllm_kl
                stats["is_filter_ratio"] = filter_ratio(correction, batch)
            self.statistics = {k: as_statistic(v, batch.mask) for k, v in stats.items()}
            values = {k: s.value().to(torch.float32) for k, s in self.statistics.items()}
            self.metrics = {k: v for k, v in values.items() if k not in UPSTREAM_OUTPUTS}
        vllm_kl = values.get("vllm_kl")
        is_filter_ratio = values.get("is_filter_ratio")
        return loss, values["ppo_clip_ratio"], values["ppo_kl"], vllm_kl, is_filter_ratio

    def _topk(self, log_probs, extra) -> Optional[TopK]:
        unknown = sorted(set(extra) - set(TOPK_ARGUMENTS))
        if unknown:
            raise ValueError(f"unexpected PolicyLoss.forward argument(s) {unknown}")
        given = [name for name in TOPK_ARGUMENTS if extra.get(name) is not None]
        if not given:
            if self.config.needs_topk:
                raise ValueError(
                    f"{'/'.join(self.config.divergences)} needs the rollout's top-K log-probs: pass "
                    f"{', '.join(TOPK_ARGUMENTS)} (on the CLI: --vllm_logprobs_topk K)"
                )
            return None
        if len(given) != len(TOPK_ARGUMENTS):
            missing = [name for name in TOPK_ARGUMENTS if name not in given]
            raise ValueError(f"top-K inputs are incomplete: missing {missing}")
        dtype = torch.float64 if getattr(log_probs, "dtype", None) == torch.float64 else torch.float32
        topk = make_topk(*(extra[name] for name in TOPK_ARGUMENTS), dtype=dtype)
        if isinstance(log_probs, torch.Tensor) and topk.ids.shape[:2] != log_probs.shape:
            raise ValueError(f"rollout_topk_ids has shape {tuple(topk.ids.shape)} but log_probs has shape "
                             f"{tuple(log_probs.shape)}")
        return topk
