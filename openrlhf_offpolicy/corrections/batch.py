"""The inputs every method reads and the two kinds of result methods return.

``PolicyBatch`` is built once per ``PolicyLoss.forward`` call, already in float32 with every
non-finite or masked-out entry replaced by 0, so no method has to guard against NaN/Inf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Dict, Optional

from ._torch import torch

from .stats import clamp_log_ratio


@dataclass
class TopK:
    """The rollout's top-K log-probs and the current policy's log-probs at the same ids
    (README, "Top-K divergences").

    ids:               ``[B, T, K]`` token ids of TopK(mu) at every action token (-1: empty slot)
    rollout_log_probs: ``[B, T, K]`` log mu at those ids
    log_probs:         ``[B, T, K]`` log pi_theta at those ids (detached)
    valid:             ``[B, T, K]`` slots that hold an id with usable log-probs
    sampled_in_topk:   ``[B, T]`` the sampled token a_t is one of the ids (S_t counts it once)
    nonfinite:         ``[B, T]`` a slot holds NaN or +inf (the token is dropped where top-K is read)
    """

    ids: torch.Tensor
    rollout_log_probs: torch.Tensor
    log_probs: torch.Tensor
    valid: torch.Tensor
    sampled_in_topk: torch.Tensor
    nonfinite: Optional[torch.Tensor] = None


def make_topk(ids: torch.Tensor, rollout_log_probs: torch.Tensor, log_probs: torch.Tensor,
              action_ids: torch.Tensor, dtype: Optional[torch.dtype] = None) -> TopK:
    """Validate and assemble the top-K inputs; ``action_ids`` ``[B, T]`` are the sampled tokens
    (``dtype``: of the log-probs, float32 by default)."""
    dtype = torch.float32 if dtype is None else dtype
    for name, value in (("rollout_topk_ids", ids), ("rollout_topk_log_probs", rollout_log_probs),
                        ("topk_log_probs", log_probs), ("action_ids", action_ids)):
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ids.dim() != 3 or rollout_log_probs.shape != ids.shape or log_probs.shape != ids.shape:
        raise ValueError(
            f"rollout_topk_ids {tuple(ids.shape)}, rollout_topk_log_probs {tuple(rollout_log_probs.shape)} and "
            f"topk_log_probs {tuple(log_probs.shape)} must share one [batch, actions, K] shape"
        )
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"rollout_topk_ids must hold integer token ids, got {ids.dtype}")
    if action_ids.shape != ids.shape[:2]:
        raise ValueError(f"action_ids has shape {tuple(action_ids.shape)} but the top-K ids have {tuple(ids.shape)}")
    rollout_log_probs = rollout_log_probs.detach().to(dtype)
    log_probs = log_probs.detach().to(dtype)
    # NaN or +inf marks a slot as unusable (``nonfinite``: its token is dropped from the loss and
    # counted by ``make_policy_batch``); -inf (a token the sampler filtered out) is a valid probability 0.
    unusable = (ids >= 0) & (torch.isnan(rollout_log_probs) | torch.isnan(log_probs)
                             | (rollout_log_probs == float("inf")) | (log_probs == float("inf")))
    valid = (ids >= 0) & ~unusable
    zero = torch.zeros((), dtype=dtype, device=ids.device)
    return TopK(
        ids=ids.long(),
        rollout_log_probs=torch.where(valid, rollout_log_probs, zero),
        log_probs=torch.where(valid, log_probs, zero),
        valid=valid,
        sampled_in_topk=((ids == action_ids.unsqueeze(-1)) & valid).any(dim=-1),
        nonfinite=unusable.any(dim=-1),
    )


@dataclass
class PolicyBatch:
    """One micro-batch, ``[B, T]`` over action positions.

    log_probs:          log pi_theta (carries the gradient)
    old_log_probs:      log pi_old, the trainer's recomputation at rollout time (detached)
    rollout_log_probs:  log pi_roll = log mu, the sampler's log-probs (detached), or None
    mask:               float 0/1, action tokens whose inputs (read by the loss) are all finite
    rollout_mask:       float 0/1, the tokens of ``mask`` with a finite pi_roll; differs from ``mask``
                        only when the loss does not read pi_roll (diagnostics only)
    """

    log_probs: torch.Tensor
    old_log_probs: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    rollout_log_probs: Optional[torch.Tensor] = None
    topk: Optional[TopK] = None
    rollout_mask: Optional[torch.Tensor] = None

    @cached_property
    def rollout_on(self) -> torch.Tensor:
        """Float mask of the tokens with a usable pi_roll (``mask`` unless set apart)."""
        return self.mask if self.rollout_mask is None else self.rollout_mask

    @cached_property
    def on(self) -> torch.Tensor:
        """``mask`` as a bool tensor."""
        return self.mask > 0

    @cached_property
    def token_counts(self) -> torch.Tensor:
        """Action tokens per sequence, ``[B]``."""
        return self.mask.sum(dim=-1)

    @cached_property
    def n_tokens(self) -> torch.Tensor:
        """Number of action tokens (at least 1, so it can divide)."""
        return self.token_counts.sum().clamp(min=1.0)

    @cached_property
    def has_tokens(self) -> torch.Tensor:
        """Sequences with at least one action token, ``[B]`` bool."""
        return self.token_counts > 0

    @cached_property
    def n_sequences(self) -> torch.Tensor:
        """Number of sequences with at least one action token (at least 1)."""
        return self.has_tokens.sum().clamp(min=1).to(self.mask.dtype)

    @cached_property
    def log_rho(self) -> torch.Tensor:
        """Mismatch log-ratio ``log(pi_old / pi_roll)``, clamped, 0 off the mask (detached)."""
        if self.rollout_log_probs is None:
            raise ValueError("this method needs rollout_log_probs (pi_roll), but none were given")
        return clamp_log_ratio(self.old_log_probs - self.rollout_log_probs) * self.rollout_on

    @cached_property
    def raw_log_ratio(self) -> torch.Tensor:
        """``log pi_theta - log pi_old`` unclamped (carries the gradient; upstream's ppo_kl reads it)."""
        return self.log_probs - self.old_log_probs

    @cached_property
    def log_ratio(self) -> torch.Tensor:
        """PPO log-ratio ``log(pi_theta / pi_old)``, clamped (carries the gradient)."""
        return clamp_log_ratio(self.raw_log_ratio)

    def without_graph(self) -> "PolicyBatch":
        """This batch with ``log_probs`` detached and the cached tensors that carry the gradient dropped,
        so that keeping it (for the lazily computed metrics) keeps no autograd graph alive."""
        self.log_probs = self.log_probs.detach()
        for name in ("raw_log_ratio", "log_ratio"):
            self.__dict__.pop(name, None)
        return self

    @property
    def behaviour_log_probs(self) -> torch.Tensor:
        """log mu: the rollout policy when its log-probs are known, else pi_old."""
        return self.rollout_log_probs if self.rollout_log_probs is not None else self.old_log_probs


@dataclass
class Correction:
    """What a mismatch correction returns.

    coef:      detached ``[B, T]`` coefficient c_t multiplying the per-token policy loss;
               0 where the gate rejects.
    rejected:  ``[B, T]`` bool, tokens whose contribution the gate removed.
    filtered:  out-of-band units (rejected or clamped), ``[B, T]`` for a token-level gate or
               ``[B]`` for a sequence-level one; this is upstream's ``is_filter_ratio`` unit.
    metrics:   diagnostics; a value may be a zero-argument callable, evaluated only when
               ``PolicyLoss.metrics`` is read.
    weight_level: "token" when each token carries its own weight, "sequence" when every kept
               token of a sequence carries the sequence's weight (what ``--is_batch_normalize``
               averages over).
    """

    coef: torch.Tensor
    rejected: torch.Tensor
    filtered: torch.Tensor
    weight_level: str = "token"
    metrics: Dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Surrogate:
    """What a policy loss returns: the per-token loss (with gradient) and its clipped tokens.

    ``clipped`` is None for a loss that never clips. A metric may be a zero-argument callable,
    evaluated only when ``PolicyLoss.metrics`` is read.
    """

    loss: torch.Tensor
    clipped: Optional[torch.Tensor]
    metrics: Dict[str, torch.Tensor] = field(default_factory=dict)


def _as_2d(name: str, value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.shape == shape:
        return value
    if name == "advantages" and value.shape in {shape[:1], torch.Size([shape[0], 1])}:
        return value.reshape(shape[0], 1).expand(shape)  # a per-sequence advantage
    raise ValueError(f"{name} has shape {tuple(value.shape)} but log_probs has shape {tuple(shape)}")


def _bad_mask_value(mask: torch.Tensor) -> str:
    bad = mask[~((mask == 0) | (mask == 1))]
    return f"{int(bad.numel())} other value(s), e.g. {float(bad.flatten()[0])!r}"


def make_policy_batch(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    action_mask: Optional[torch.Tensor] = None,
    rollout_log_probs: Optional[torch.Tensor] = None,
    topk: Optional[TopK] = None,
    rollout_in_loss: bool = True,
):
    """Validate shapes, compute in float32 (float64 stays float64), and mask non-finite tokens.

    Returns ``(batch, action_mask, nonfinite)``: ``action_mask`` is the float mask as given (the
    aggregation denominator); ``batch.mask`` additionally drops tokens where any input the loss
    reads is NaN/Inf (or a top-K slot read by the loss holds NaN/+inf), whose entries are replaced
    by 0 so no NaN reaches the loss or its gradient; ``nonfinite`` is the number of action tokens
    dropped that way. With ``rollout_in_loss=False`` (no correction and a loss that does not read
    pi_roll, as upstream) a non-finite pi_roll does not drop its token: it is left out of the
    mismatch diagnostics only (``batch.rollout_mask``), as upstream's loss never reads it.
    """
    if not isinstance(log_probs, torch.Tensor) or log_probs.dim() != 2:
        shape = tuple(log_probs.shape) if isinstance(log_probs, torch.Tensor) else type(log_probs).__name__
        raise ValueError(f"log_probs must be a [batch, actions] tensor, got {shape}")
    shape = log_probs.shape
    dtype = torch.float64 if log_probs.dtype == torch.float64 else torch.float32
    inputs = {
        "old_log_probs": _as_2d("old_log_probs", old_log_probs, shape),
        "advantages": _as_2d("advantages", advantages, shape),
    }
    if rollout_log_probs is not None:
        inputs["rollout_log_probs"] = _as_2d("rollout_log_probs", rollout_log_probs, shape)
    if action_mask is None:
        mask = torch.ones(shape, dtype=dtype, device=log_probs.device)
    else:
        mask = _as_2d("action_mask", action_mask, shape).to(dtype)
    log_probs = log_probs.to(dtype)
    inputs = {k: v.detach().to(dtype) for k, v in inputs.items()}
    side = {}
    if not rollout_in_loss and "rollout_log_probs" in inputs:
        side["rollout_log_probs"] = inputs.pop("rollout_log_probs")

    # A NaN/Inf anywhere makes that input's sum non-finite: one read-only reduction per input and
    # one synchronisation decide the common all-finite case, which copies nothing. A finite sum can
    # still overflow to inf; the elementwise check below then finds every entry finite. The same
    # synchronisation checks that the action mask holds only 0 and 1 (a NaN or 0.5 is refused).
    tensors = [log_probs.detach(), *inputs.values()]
    sums = torch.stack([t.sum() for t in tensors])
    mask_ok = None
    if action_mask is not None and action_mask.dtype != torch.bool:
        mask_ok = ((mask == 0) | (mask == 1)).all()
        sums = torch.cat([sums, torch.where(mask_ok, 0.0, float("nan")).to(sums.dtype).reshape(1)])
    topk_bad = topk.nonfinite if topk is not None and topk.nonfinite is not None else None
    if topk_bad is not None:
        sums = torch.cat([sums, topk_bad.any().to(sums.dtype).reshape(1) * float("nan")])
    zero = torch.zeros((), dtype=dtype, device=log_probs.device)
    if bool(torch.isfinite(sums).all()):
        if action_mask is not None:
            # A masked token's advantage is never read; zeroed, a huge one (r A = inf) cannot reach a
            # gradient as 0 x inf through a method's own nonlinearity.
            inputs["advantages"] = torch.where(mask > 0, inputs["advantages"], zero)
        batch = PolicyBatch(log_probs=log_probs, mask=mask, topk=topk, **inputs)
        nonfinite = 0
    else:
        if mask_ok is not None and not bool(mask_ok):
            raise ValueError(f"action_mask must hold only 0 and 1 (or be boolean); it holds {_bad_mask_value(mask)}")
        finite = torch.ones(shape, dtype=torch.bool, device=log_probs.device)
        for t in tensors:
            finite &= torch.isfinite(t)
        if topk_bad is not None:
            finite &= ~topk_bad
        valid = finite & (mask > 0)
        batch = PolicyBatch(
            log_probs=torch.where(valid, log_probs, zero),
            mask=valid.to(dtype),
            topk=topk,
            **{k: torch.where(valid, v, zero) for k, v in inputs.items()},
        )
        nonfinite = int((~finite & (mask > 0)).sum())
    if side:
        rollout = side["rollout_log_probs"]
        if bool(torch.isfinite(rollout.sum())):  # the common case: nothing to set apart, nothing copied
            batch.rollout_log_probs = rollout
        else:
            usable = torch.isfinite(rollout)
            batch.rollout_log_probs = torch.where(usable, rollout, zero)
            batch.rollout_mask = batch.mask * usable.to(dtype)
    return batch, mask, nonfinite
