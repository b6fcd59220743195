"""``PolicyLoss``: a drop-in for ``openrlhf.models.loss.PolicyLoss`` (OpenRLHF 0.11.2).

Same constructor kwargs (plus the seed-style correction API and every method parameter, see
``corrections.config``), same ``forward`` arguments, same 5-tuple
``(loss, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio)``. With only upstream kwargs the outputs
and gradients equal upstream's. After every call ``self.metrics`` holds the diagnostics as detached
float32 tensors: 0-d token means, or ``[B]`` per-sequence values (see ``corrections.diagnostics``).
They are computed when ``metrics`` is first read, from tensors the call already made, so a caller
that does not read them does not pay for them. Nothing here imports OpenRLHF.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn

from ..corrections import CORRECTIONS, POLICY_LOSSES, TopK, aggregate_loss, make_topk, resolve_config
from ..corrections.batch import make_policy_batch
from ..corrections.normalize import batch_normalize
from ..corrections.rejection import apply_rejection
from ..corrections.diagnostics import (clip_fraction, correction_metrics, filter_ratio, masked_total,
                                      mismatch_metrics)


TOPK_ARGUMENTS = ("rollout_topk_ids", "rollout_topk_log_probs", "topk_log_probs", "action_ids")
# Upstream 0.11.2's constructor order, so positional calls keep working.
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
        self._pending = None  # what the last forward left for the lazily computed metrics
        self._metrics: Optional[Dict[str, torch.Tensor]] = {}
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
            log_probs, old_log_probs, advantages, action_mask, rollout_log_probs, topk
        )

        surrogate = self.surrogate(batch, self.config)
        correction = self.correction(batch, self.config)
        correction = apply_rejection(correction, batch, self.config.rejection)
        correction = batch_normalize(correction, batch, self.config.is_batch_normalize)
        per_token = surrogate.loss * correction.coef  # coef is 0 off the mask and on non-finite tokens
        loss = aggregate_loss(per_token, action_mask, self.config.token_level_loss, dp_size, batch_num_tokens,
                              global_batch_size, premasked=True)

        # Upstream's four statistics now; every other diagnostic when ``metrics`` is first read.
        with torch.no_grad():
            clip_ratio = clip_fraction(surrogate, batch)
            ppo_kl = -masked_total(batch.raw_log_ratio.detach(), batch.mask) / batch.n_tokens
            vllm_kl = is_filter_ratio = None
            if self.config.correction_enabled:
                vllm_kl = -batch.log_rho.sum() / batch.n_tokens  # mean(log pi_roll - log pi_old), = mismatch/k1
                is_filter_ratio = filter_ratio(correction, batch)
        self._pending = (batch.without_graph(), surrogate.metrics, correction, nonfinite, action_mask)
        self._metrics = None
        return loss, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio

    @property
    def metrics(self) -> Dict[str, torch.Tensor]:
        """The diagnostics of the last ``forward`` (detached float32 tensors), computed on first read."""
        if self._metrics is None:
            self._metrics = self._compute_metrics(*self._pending) if self._pending is not None else {}
            self._pending = None
        return self._metrics

    @metrics.setter
    def metrics(self, value: Dict[str, torch.Tensor]) -> None:
        self._metrics, self._pending = value, None

    @torch.no_grad()
    def _compute_metrics(self, batch, surrogate_metrics, correction, nonfinite, action_mask) -> Dict[str, torch.Tensor]:
        metrics = {"loss/nonfinite_frac": nonfinite / action_mask.sum().clamp(min=1.0)}
        metrics.update(surrogate_metrics)
        if batch.rollout_log_probs is not None:
            metrics.update(mismatch_metrics(batch))
        metrics.update(correction.metrics)  # the correction's and the rejection criteria's own
        if self.config.correction_enabled:
            metrics.update(correction_metrics(correction, batch))
        return {k: torch.as_tensor(v() if callable(v) else v).detach().float() for k, v in metrics.items()}

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
