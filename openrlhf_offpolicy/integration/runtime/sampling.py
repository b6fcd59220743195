"""Rollout log-probs that mean what the loss assumes: the rollout's truncation, checked or matched.

vLLM's processed log-probs (what the rollout returns) are renormalised over the tokens its top-k /
top-p / min-p filter keeps, while the trainer's old and current log-probs use the full vocabulary.
With any truncation, log rho_t = log Z_t < 0 even when the two engines agree exactly (Z_t: the
kept mass), so every consumer of pi_roll (corrections, DPPO, the mismatch/* metrics) would measure
the truncation. Two ways out:
  * refuse: a run with top_p < 1, top_k > 0 or min_p > 0 and a consumer of rollout log-probs exits
    with one line before Ray (``check_sampling``), or fails at the first generation whose sampling
    params an agent or custom code changed (``check_generation_params``);
  * ``--match_rollout_sampling``: the trainer applies the same truncation and renormalisation to
    its logits for the old and the current log-probs (``models.logprobs.Truncation``), so rho_t
    measures the engine mismatch only. The policy trained is then the truncated policy.
Not matched: vLLM's ``min_tokens`` (upstream asks for 1) masks the stop tokens at the first
generated token; pi_roll is then renormalised without them there, a bias of log(1 - p_stop) on the
first token of each sequence (see docs/design.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Optional

from .upstream_args import vllm_enabled

if TYPE_CHECKING:  # settings.resolve calls check_sampling
    from .settings import OffPolicySettings


def truncation_of(top_k, top_p, min_p) -> str:
    """A description of the truncation ("" when there is none)."""
    parts = []
    if top_p is not None and float(top_p) < 1.0:
        parts.append(f"top_p={float(top_p):g}")
    if top_k is not None and int(top_k) > 0:
        parts.append(f"top_k={int(top_k)}")
    if min_p is not None and float(min_p) > 0.0:
        parts.append(f"min_p={float(min_p):g}")
    return " ".join(parts)


def consumers(settings: OffPolicySettings, config) -> str:
    """What reads the rollout log-probs in this run ("" when nothing does)."""
    from ...corrections import POLICY_LOSSES

    if config.correction_enabled:
        return f"the {config.correction} correction"
    if config.anchor_on_rollout:
        return f"{config.policy_loss_type} anchored on the rollout"
    if POLICY_LOSSES.get(config.policy_loss_type).reads_rollout:
        return f"policy_loss_type {config.policy_loss_type}"
    if settings.request_rollout_logprobs or settings.logprobs_topk:
        return "the mismatch/* metrics"
    return ""


def with_rollout_sampling(settings: OffPolicySettings, args) -> OffPolicySettings:
    """The settings with the rollout's truncation read from upstream ``args``."""
    top_p = getattr(getattr(args, "rollout", None), "top_p", 1.0)
    return replace(settings, rollout_top_p=float(1.0 if top_p is None else top_p))


def check_sampling(settings: OffPolicySettings, config, args) -> None:
    """ValueError (one line) for a truncated rollout whose log-probs are consumed unmatched."""
    if settings.match_rollout_sampling and not vllm_enabled(args):
        raise ValueError("--match_rollout_sampling needs vLLM engines, but vLLM is off (--vllm.num_engines)")
    top_p = getattr(getattr(args, "rollout", None), "top_p", 1.0)
    truncated = truncation_of(settings.rollout_top_k, top_p, settings.rollout_min_p)
    if not truncated or settings.match_rollout_sampling or not vllm_enabled(args):
        return
    consumer = consumers(settings, config)
    if consumer:
        raise ValueError(
            f"--rollout.{truncated.replace(' ', ', ')} truncates the rollout distribution, so its log-probs are "
            f"renormalised over the kept tokens and {consumer} would measure the truncation, not the engine "
            "mismatch; add --match_rollout_sampling (the trainer applies the same truncation) or sample "
            "without truncation" + (" (or --no_mismatch_metrics)" if consumer.startswith("the mismatch") else "")
        )


def check_generation_params(params, settings: Optional[OffPolicySettings], wanted: int, sample: str) -> None:
    """At every generation: log-probs requested, and no truncation the trainer does not apply."""
    if settings is None:
        return
    if wanted and getattr(params, "logprobs", None) is None:
        raise ValueError(
            f"{sample}: a generation was requested without logprobs, so rollout_log_probs would not cover its "
            "tokens; an agent step probably returned sampling_params without logprobs (copy the ones it received)"
        )
    if not wanted:
        return
    used = truncation_of(getattr(params, "top_k", None), getattr(params, "top_p", None), getattr(params, "min_p", None))
    expected = ""
    if settings.match_rollout_sampling:
        expected = truncation_of(settings.rollout_top_k, settings.rollout_top_p, settings.rollout_min_p)
    if used != expected:
        raise ValueError(
            f"{sample}: generation sampled with truncation '{used or 'none'}' but the trainer's log-probs use "
            f"'{expected or 'none'}'; rollout log-probs would measure the truncation. Keep the run's sampling "
            "params (an agent step or custom code changed them)"
        )


def check_rollout_log_probs_length(output: dict, sample: str) -> None:
    """One rollout log-prob per observation token (zero padding would hide a gap: rho = pi_old)."""
    log_probs = output.get("rollout_log_probs")
    if log_probs is None:
        return
    tokens = output.get("observation_tokens") or []
    if len(log_probs) != len(tokens):
        raise ValueError(
            f"{sample}: rollout_log_probs has {len(log_probs)} entries for {len(tokens)} observation tokens; "
            "an agent step probably returned sampling_params without logprobs, so some actions have no "
            "rollout log-probs"
        )
