"""``PolicyLoss``: a drop-in for ``openrlhf.models.loss.PolicyLoss`` (OpenRLHF 0.11.2).

Same constructor kwargs (plus the seed-style correction API and every method parameter, see
``corrections.config``), same ``forward`` arguments, same 5-tuple
``(loss, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio)``. With only upstream kwargs the outputs
and gradients equal upstream's. After every call ``self.statistics`` holds every metric of the
micro-batch as a statistic that reduces exactly over a training step (``corrections.metrics``),
including upstream's ``ppo_clip_ratio`` / ``ppo_kl`` / ``vllm_kl`` / ``is_filter_ratio``, and
``self.metrics`` the diagnostics' values on this micro-batch as detached 0-d float32 tensors. Both
are computed when first read, from tensors the call already made, so a caller that does not read
them does not pay for them. Nothing here imports OpenRLHF.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..corrections import (
    CORRECTIONS,
    POLICY_LOSSES,
    OffPolicyConfig,
    TopK,
    aggregate_loss,
    make_topk,
    method_params,
    resolve_config,
)
from ..corrections.batch import make_policy_batch
from ..corrections.config import ARGUMENT_HELP, UPSTREAM_GATES, correction_choices
from ..corrections.normalize import batch_normalize
from ..corrections.rejection import apply_rejection
from ..corrections.diagnostics import (
    clip_fraction,
    clip_statistic,
    clipped_count,
    correction_metrics,
    filter_ratio,
    mismatch_metrics,
)
from ..corrections.metrics import Mean, Statistic, as_statistic, masked_total, token_mean


TOPK_ARGUMENTS = ("rollout_topk_ids", "rollout_topk_log_probs", "topk_log_probs", "action_ids")
# Upstream's own outputs (training_step logs them under these names), kept out of ``metrics``.
UPSTREAM_OUTPUTS = ("ppo_clip_ratio", "ppo_kl", "vllm_kl", "is_filter_ratio")

def _valid_values() -> Dict[str, List[str]]:
    return {
        "policy_loss_type": POLICY_LOSSES.names(),
        "is_correction_level": ["off", *dict.fromkeys(k[0] for k in UPSTREAM_GATES)],
        "is_correction_mode": list(dict.fromkeys(k[1] for k in UPSTREAM_GATES)),
        "is_correction_gating": list(dict.fromkeys(k[2] for k in UPSTREAM_GATES)),
        "vllm_is_correction_type": correction_choices(),
        **{p.name: list(p.choices()) for p in method_params().values() if p.choices is not None},
    }


def policy_loss_arguments() -> List[Tuple[str, Any, str]]:
    """(name, default, description with valid values) of every ``PolicyLoss`` keyword argument."""
    valid = _valid_values()
    out = []
    for name, param in inspect.signature(resolve_config).parameters.items():
        if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            out.append((name, param.default, ARGUMENT_HELP.get(name, "")))
    for p in method_params().values():
        out.append((p.name, p.default, p.help + ("; None allowed" if p.optional else "")))
    return [(name, default, text + (f"; one of {', '.join(valid[name])}" if name in valid else ""))
            for name, default, text in out]


def arguments_help() -> str:
    lines = ["PolicyLoss keyword arguments (name = default: meaning; valid values):"]
    lines += [f"  {name} = {default!r}: {text}" for name, default, text in policy_loss_arguments()]
    return "\n".join(lines)


class PolicyLoss(nn.Module):
    """Policy loss with rollout/training mismatch corrections; a drop-in for upstream's ``PolicyLoss``.

    The first nine arguments are upstream 0.11.2's, in its order (positional calls keep working);
    ``enable_vllm_is_correction`` / ``vllm_is_truncated_threshold`` / ``vllm_is_correction_type`` are
    the 0.9.x fork's correction API; ``**method_params`` are the registered methods' parameters.
    ``PolicyLoss.help()`` prints every argument with its default and valid values. A bad name or
    value raises ``ValueError`` (a misspelled name with the nearest valid one).

    forward pipeline: ratios -> surrogate -> correction coefficient -> aggregation -> metrics.
    """

    def __init__(self, *args: Any, config: Optional[OffPolicyConfig] = None, **kwargs: Any) -> None:
        """``PolicyLoss(...)`` takes ``resolve_config``'s arguments (its signature is this one's), or
        ``PolicyLoss(config=resolve_config(...))`` an already resolved configuration."""
        super().__init__()
        if config is not None:
            if args or kwargs:
                raise ValueError("PolicyLoss takes config= or the keyword arguments, not both")
            if not isinstance(config, OffPolicyConfig) or not config.validated:
                raise ValueError("PolicyLoss(config=...) takes the OffPolicyConfig that resolve_config(...) returns")
            self.config = config
        else:
            _check_names(kwargs)
            self.config = resolve_config(*args, **kwargs)
        self.surrogate = POLICY_LOSSES.get(self.config.policy_loss_type).fn
        self.correction = CORRECTIONS.get(self.config.correction).fn
        self._pending = None  # what the last forward left for the lazily computed statistics
        self._statistics: Optional[Dict[str, Statistic]] = {}
        self._metrics: Optional[Dict[str, torch.Tensor]] = {}
        # Without a correction upstream's loss never reads pi_roll: a bad value must not drop a token.
        self.rollout_in_loss = self.config.reads_rollout_log_probs
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
        """Upstream's arguments, plus the top-K inputs of the top-K divergences (docs/design.md, "Top-K divergences"):
        ``rollout_topk_ids`` / ``rollout_topk_log_probs`` ``[B, T, K]`` (the rollout's top-K),
        ``topk_log_probs`` ``[B, T, K]`` (pi_theta at those ids) and ``action_ids`` ``[B, T]``; and
        ``policy_version_lag`` ``[B]``, each sample's policy-version lag (``a3po_alpha='versions'``)."""
        version_lag = extra.pop("policy_version_lag", None)
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
        batch.version_lag = version_lag

        surrogate = self.surrogate(batch, self.config)
        correction = self.correction(batch, self.config)
        correction = apply_rejection(correction, batch, self.config.rejection)
        correction = batch_normalize(correction, batch, self.config.is_batch_normalize)
        # coef is 0 off the mask and on non-finite tokens; ``where``, not a product, so that a masked
        # token whose loss overflows (r A = inf) contributes 0, never 0 * inf = NaN.
        weighted = surrogate.loss * correction.coef
        per_token = torch.where(correction.coef != 0, weighted, torch.zeros((), dtype=weighted.dtype,
                                                                              device=weighted.device))
        loss = aggregate_loss(per_token, action_mask, self.config.token_level_loss, dp_size, batch_num_tokens,
                              global_batch_size, premasked=True)

        # Upstream's four statistics now; every other diagnostic when ``metrics`` is first read.
        with torch.no_grad():
            clipped = clipped_count(surrogate.clipped, batch)
            clip_ratio = clip_fraction(surrogate, batch, clipped)
            kl_total = masked_total(batch.raw_log_ratio.detach(), batch.mask)
            ppo_kl = -kl_total / batch.n_tokens
            # reductions made here are kept as statistics (the lazy statistics do not make them again)
            done = {"ppo_kl": Mean(total=-kl_total, count=batch.token_total),  # -(a - b) == b - a exactly
                    "ppo_clip_ratio": clip_statistic(surrogate.clipped, batch, clipped)}
            vllm_kl = is_filter_ratio = None
            if self.config.correction_enabled:
                vllm_kl = -batch.log_rho.sum() / batch.n_tokens  # mean(log pi_roll - log pi_old), = mismatch/k1
                done["is_filter_ratio"] = filter_ratio(correction, batch)
                is_filter_ratio = done["is_filter_ratio"].value().to(batch.mask.dtype)
        self._pending = (batch.without_graph(), surrogate.clipped, surrogate.metrics, correction, nonfinite,
                         action_mask, done)
        self._statistics = self._metrics = None
        return loss, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio

    @staticmethod
    def help() -> None:
        """Print every keyword argument with its default and valid values."""
        print(arguments_help())

    @property
    def statistics(self) -> Dict[str, Statistic]:
        """Every metric of the last ``forward`` as a step statistic (``corrections.metrics``), computed on
        first read."""
        if self._statistics is None:
            self._statistics = self._compute_statistics(*self._pending) if self._pending is not None else {}
            self._pending = None
        return self._statistics

    @property
    def metrics(self) -> Dict[str, torch.Tensor]:
        """The diagnostics' values on the last ``forward``'s micro-batch (detached 0-d float32 tensors)."""
        if self._metrics is None:
            self._metrics = {k: s.value().to(torch.float32) for k, s in self.statistics.items()
                             if k not in UPSTREAM_OUTPUTS}
        return self._metrics

    @torch.no_grad()
    def _compute_statistics(self, batch, clipped, surrogate_metrics, correction, nonfinite,
                            action_mask, done) -> Dict[str, Statistic]:
        stats = {
            "ppo_clip_ratio": done["ppo_clip_ratio"],
            "ppo_kl": done["ppo_kl"],
            "loss/nonfinite_frac": Mean(total=torch.tensor(float(nonfinite)), count=action_mask.sum()),
        }
        stats.update(surrogate_metrics)
        if batch.rollout_log_probs is not None:
            stats.update(mismatch_metrics(batch))
            if not self.rollout_in_loss:
                stats["mismatch/nonfinite_frac"] = token_mean(batch.mask - batch.rollout_on, batch.mask,
                                                              batch.token_total)
        stats.update(correction.metrics)  # the correction's and the rejection criteria's own
        if self.config.correction_enabled:
            stats.update(correction_metrics(correction, batch))
            stats["vllm_kl"] = stats["mismatch/k1"]  # mean(log pi_roll - log pi_old), upstream's vllm_kl
            stats["is_filter_ratio"] = done["is_filter_ratio"]
        return {k: as_statistic(v() if callable(v) else v, batch.mask) for k, v in stats.items()}

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


PolicyLoss.__doc__ += "\n" + "\n".join("    " + line for line in arguments_help().splitlines()) + "\n"


def _check_names(method_kwargs: Dict[str, Any]) -> None:
    known = [name for name, _, _ in policy_loss_arguments()]
    for name in method_kwargs:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown PolicyLoss argument {name!r}; {hint}(PolicyLoss.help() lists every argument)")


def _signature_of_resolve_config() -> inspect.Signature:
    """``PolicyLoss.__init__``'s signature: ``self``, ``resolve_config``'s arguments, then ``config``."""
    own = inspect.signature(resolve_config).parameters.values()
    head = [p for p in own if p.kind is not p.VAR_KEYWORD]
    tail = [p for p in own if p.kind is p.VAR_KEYWORD]
    self_ = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    config = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None,
                               annotation=Optional[OffPolicyConfig])
    return inspect.Signature([self_, *head, config, *tail])


PolicyLoss.__init__.__signature__ = _signature_of_resolve_config()
