"""The replacements ``patch_table`` installs into OpenRLHF 0.11.2 (except top-K's and the driver's).

Each factory has the table's shape ``make(original, settings) -> replacement``. Wrappers that
upstream binds early (``create_vllm_engines``, ``SamplingParams``) read the settings installed
when they are *called* (``patches.current()``), so the driver's re-install with final settings
reaches them.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from typing import Optional

import torch

from ...corrections.metrics import StepMetrics
from ...models.logprobs import Truncation, log_probs_with_topk
from . import patches
from .ray_classes import upstream_actor_method
from .loss import PENDING, OpenRLHFPolicyLoss, PendingTopK, policy_loss_class
from .contexts import LOGITS_TOPK_IDS, POLICY_TRUNCATION
from .settings import OffPolicySettings


# --------------------------------------------------------------------------- the loss and its metrics
def policy_loss(original, settings: OffPolicySettings):
    return policy_loss_class(settings)


def training_step(original, settings: OffPolicySettings):
    """Around each micro-batch: announce its top-K data (if any) and the rollout truncation to the
    actor forward; then add the loss's step statistics to the returned status (``StepMetrics``)."""

    @functools.wraps(original)
    def wrapped(self, experience, *args, **kwargs):
        loss_fn = self.actor_loss_fn
        if not isinstance(loss_fn, OpenRLHFPolicyLoss):
            return original(self, experience, *args, **kwargs)
        with contextlib.ExitStack() as stack:
            if getattr(experience, "rollout_topk_ids", None) is not None:
                stack.enter_context(_set(PENDING, PendingTopK.from_experience(experience)))
            stack.enter_context(_set(POLICY_TRUNCATION, rollout_truncation(patches.current())))
            loss_fn.experience_info = experience.info
            try:
                status = original(self, experience, *args, **kwargs)
            finally:
                loss_fn.experience_info = None
        step_metrics(self).add(loss_fn.statistics, status, num_samples=experience.action_mask.shape[0])
        return status

    return wrapped


def step_metrics(trainer) -> StepMetrics:
    if getattr(trainer, "_offpolicy_step_metrics", None) is None:
        trainer._offpolicy_step_metrics = StepMetrics()
    return trainer._offpolicy_step_metrics


def ppo_train(original, settings: OffPolicySettings):
    """One training step: reset the statistics, run upstream's loop, then write each metric's exact
    value over the step (all DP ranks, all micro-batches) into the returned status."""

    @functools.wraps(original)
    def wrapped(self, *args, **kwargs):
        metrics = step_metrics(self)
        metrics.reset()
        status = original(self, *args, **kwargs)
        maxima = metrics.local_maxima()
        if maxima:  # one collective for all of them (a dict would take one per metric)
            reduced = self.strategy.all_reduce(torch.tensor(list(maxima.values()), dtype=torch.float64), op="max")
            maxima = dict(zip(maxima, torch.as_tensor(reduced).tolist()))
        return metrics.finalize(status, maxima)

    return wrapped


@contextlib.contextmanager
def _set(var: contextvars.ContextVar, value):
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


# --------------------------------------------------------------------------- rollout log-probs
def rollout_logprobs_wanted(settings: Optional[OffPolicySettings]) -> int:
    """How many log-probs per generated token to request from vLLM (0: none)."""
    if settings is None:
        return 0
    if settings.logprobs_topk:
        return settings.logprobs_topk
    return 1 if settings.request_rollout_logprobs else 0


def sampling_params(original, settings: OffPolicySettings):
    def make_sampling_params(*args, **kwargs):
        from .sampling import check_generation_params

        current = patches.current()
        wanted = rollout_logprobs_wanted(current)
        if wanted:
            kwargs["logprobs"] = max(kwargs.get("logprobs") or 0, wanted)
        if kwargs.get("logprobs") is not None and "flat_logprobs" in getattr(original, "__struct_fields__", ()):
            kwargs.setdefault("flat_logprobs", True)  # flat arrays: no per-token objects (topk.rollout_arrays)
        params = original(*args, **kwargs)
        # custom code may pass top_k / min_p through generate_kwargs: the same check as multi-turn's
        check_generation_params(params, current, wanted, "the rollout's sampling params")
        return params

    make_sampling_params.__wrapped__ = original
    return make_sampling_params


def create_vllm_engines(original, settings: OffPolicySettings):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def create(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        if rollout_logprobs_wanted(patches.current()) and not bound.arguments.get("logprobs_mode"):
            bound.arguments["logprobs_mode"] = "processed_logprobs"
        return original(*bound.args, **bound.kwargs)

    return create


class _CheckingEngine:
    """Forwards to the vLLM engine; checks the sampling params of every generation of a multi-turn
    episode (an agent's ``step`` may return new ones)."""

    def __init__(self, engine, settings: OffPolicySettings, sample: str):
        self._engine, self._settings, self._sample = engine, settings, sample

    async def generate(self, prompt, sampling_params, *args, **kwargs):
        from .sampling import check_generation_params

        check_generation_params(sampling_params, self._settings, rollout_logprobs_wanted(self._settings),
                                self._sample)
        return await self._engine.generate(prompt, sampling_params, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._engine, name)


def multi_turn_execute(original, settings: OffPolicySettings):
    @functools.wraps(original)
    async def execute(self, prompt, label, sampling_params, max_length, hf_tokenizer, llm_engine, *args, **kwargs):
        from .sampling import check_rollout_log_probs_length

        current = patches.current() or settings
        sample = f"prompt {str(prompt)[:60]!r}"
        engine = _CheckingEngine(llm_engine, current, sample)
        output = await original(self, prompt, label, sampling_params, max_length, hf_tokenizer, engine,
                                *args, **kwargs)
        check_rollout_log_probs_length(output, sample)
        return output

    return execute


# --------------------------------------------------------------------------- the trainer's log-prob kernel
def rollout_truncation(settings: Optional[OffPolicySettings]) -> Optional[Truncation]:
    if settings is None or not settings.match_rollout_sampling:
        return None
    truncation = Truncation(top_k=settings.rollout_top_k, top_p=settings.rollout_top_p, min_p=settings.rollout_min_p)
    return truncation if truncation.active else None


def log_probs_from_logits(original, settings: OffPolicySettings):
    """Upstream's log-prob function on float32/64 logits replaced by ``models.logprobs``: one kernel
    for the old and the current log-probs (with top-K on, the ratio is exactly 1 at the first
    micro-step), with the rollout's truncation on the policy's forwards, and the top-K gather."""

    @functools.wraps(original)
    def wrapped(logits, labels, temperature: float = 1.0):
        if logits.dtype not in (torch.float32, torch.float64):
            truncation = POLICY_TRUNCATION.get()
            if truncation is not None or LOGITS_TOPK_IDS.get() is not None:
                raise ValueError(f"--match_rollout_sampling and --vllm_logprobs_topk need float32 logits, got "
                                 f"{logits.dtype}")
            return original(logits, labels, temperature)
        if temperature != 1.0:
            logits.div_(temperature)
        request = LOGITS_TOPK_IDS.get()
        label_lp, topk_lp = log_probs_with_topk(logits, labels, None if request is None else request["ids"],
                                                truncation=POLICY_TRUNCATION.get())
        if request is not None:
            request["log_probs"] = topk_lp.detach()
        return label_lp

    return wrapped


def policy_forward(original, settings: OffPolicySettings):
    """PolicyModelActor.forward (old log-probs): the rollout truncation applies to the policy only.

    ``PolicyModelActor`` is a ``@ray.remote`` class: the replacement is the module-level
    ``policy_actor_forward`` (see ``ray_classes.upstream_actor_method``)."""
    return policy_actor_forward


def policy_actor_forward(self, *args, **kwargs):
    """``PolicyModelActor.forward`` with this process's rollout truncation on the policy's logits."""
    upstream = upstream_actor_method(self, "forward")
    with _set(POLICY_TRUNCATION, rollout_truncation(patches.current())):
        return upstream(self, *args, **kwargs)


def approx_kl_outside_truncation(original, settings: OffPolicySettings):
    """Upstream's ``compute_approx_kl`` (policy vs reference) where the policy's log-prob can be -inf:
    with ``--match_rollout_sampling``, a token outside the trainer's truncation (counted in
    ``sampling/excluded_token_frac``, masked out of the policy loss) gets KL 0 instead of the
    estimator's cap on an infinite log-ratio; the other tokens are unchanged."""

    @functools.wraps(original)
    def wrapped(log_probs, log_probs_base, *args, **kwargs):
        outside = torch.isneginf(log_probs)
        old = kwargs.get("log_probs_old")
        if old is not None:
            outside = outside | torch.isneginf(old)
        if not bool(outside.any()):
            return original(log_probs, log_probs_base, *args, **kwargs)
        base = log_probs_base.to(log_probs.dtype)
        safe = torch.where(outside, base, log_probs)
        if old is not None:
            kwargs["log_probs_old"] = torch.where(outside, base.to(old.dtype), old)
        return original(safe, log_probs_base, *args, **kwargs).masked_fill(outside, 0.0)

    return wrapped
