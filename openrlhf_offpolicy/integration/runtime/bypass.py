"""``--bypass_old_logprobs``: pi_old := pi_roll, without the actor's old-log-prob forward.

Upstream's ``RemoteExperienceMaker.make_experience`` runs the actor over every rollout token to get
``action_log_probs`` (pi_old). In bypass mode ``make_experience`` announces its samples, and its
dispatch of the actor group's forward (``_dispatch_forward``) goes instead to
``RolloutLogProbsGroup``, which answers with each micro-batch's ``rollout_log_probs`` (the engine's
processed log-probs) and runs nothing. The reward, critic and
reference forwards are unchanged; the KL to the reference is then measured from pi_roll.

The PPO ratio becomes pi_theta / pi_roll (the behaviour policy): the anchor of AReaL's, verl's
and slime's bypass modes. A mismatch correction rho = pi_old / pi_roll would be identically 1, so
the CLI rejects those (``bypass_rejection``).
"""

from __future__ import annotations

import contextvars
import functools
from typing import Optional

def bypass_rejection(config) -> Optional[str]:
    """Why ``config`` makes no sense with pi_old = pi_roll (None: it does). The registry says which
    corrections still compare two policies then (``bypass_compatible``)."""
    from ...corrections import CORRECTIONS

    if not config.correction_enabled:
        return None
    compatible = config.correction_entry.bypass_compatible
    if compatible is not None and compatible(config):
        return None
    hints = [" ".join(e.bypass_compatible.__doc__.split()) for e in CORRECTIONS if e.bypass_compatible is not None]
    hint = f" ({'; '.join(hints)})" if hints else ""
    return (f"--bypass_old_logprobs uses pi_roll as pi_old, so correction {config.correction!r} would see "
            f"rho = pi_old/pi_roll = 1 everywhere; drop the correction or the bypass{hint}")


class RolloutLogProbsGroup:
    """Stands in for the actor ``RayActorGroup`` in ``make_experience``: its ``forward`` returns
    the rollout log-probs of each micro-batch, laid out as upstream's result gathering expects
    (one entry per micro-batch and duplicate ring/TP rank)."""

    def __init__(self, samples_list, duplicate_factor: int) -> None:
        self.samples_list = samples_list
        self.duplicate_factor = duplicate_factor
        self.forward_calls = 0

    def async_run_method_batch(self, method_name: str, **kwargs):
        import ray

        if method_name != "forward":
            raise RuntimeError(f"bypass mode stands in for the actor's forward only, not {method_name!r}")
        self.forward_calls += 1
        payload = []
        for samples in self.samples_list:
            if samples.rollout_log_probs is None:
                raise ValueError("--bypass_old_logprobs needs the rollout log-probs, but a sample has none "
                                 "(the vLLM engines did not return log-probs)")
            if samples.rollout_log_probs.shape != samples.action_mask.shape:
                raise ValueError(f"rollout_log_probs {tuple(samples.rollout_log_probs.shape)} and action_mask "
                                 f"{tuple(samples.action_mask.shape)} are not aligned")
            payload += [[samples.rollout_log_probs.float()]] * self.duplicate_factor
        return ray.put(payload)

    def async_run_method(self, method_name: str, **kwargs):
        import ray

        return ray.put(None)  # empty_cache after a colocated forward: nothing ran


# The samples of the make_experience call in progress (bypass mode), for the forward dispatch.
_SAMPLES: contextvars.ContextVar = contextvars.ContextVar("offpolicy_bypass_samples", default=None)


def with_bypass(make_experience):
    """``make_experience`` announcing its samples to ``with_bypass_dispatch`` for the call."""

    @functools.wraps(make_experience)
    def wrapped(self, samples_list, *args, **kwargs):
        token = _SAMPLES.set(samples_list)
        try:
            return make_experience(self, samples_list, *args, **kwargs)
        finally:
            _SAMPLES.reset(token)

    return wrapped


def with_bypass_dispatch(dispatch_forward):
    """``_dispatch_forward``: the actor group's forward goes to ``RolloutLogProbsGroup`` (nothing runs)."""

    @functools.wraps(dispatch_forward)
    def wrapped(self, group, sync_condition, **kwargs):
        samples_list = _SAMPLES.get()
        if samples_list is not None and group is self.actor_model_group:
            ds = self.strategy.args.ds
            group = RolloutLogProbsGroup(samples_list, ds.ring_attn_size * ds.tensor_parallel_size)
        return dispatch_forward(self, group, sync_condition, **kwargs)

    return wrapped


def bypass_make_experience(original, settings):
    """The patch-table factory ((original, settings) -> replacement) of ``with_bypass``."""
    return with_bypass(original)


def bypass_dispatch_forward(original, settings):
    """The patch-table factory of ``with_bypass_dispatch``."""
    return with_bypass_dispatch(original)
