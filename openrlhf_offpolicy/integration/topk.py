"""Carry the rollout's top-K log-probs from vLLM to the loss (``--vllm_logprobs_topk K``,
README "Top-K divergences").

Path of the data, and what is patched on it (the ``topk_on`` entries of ``patch_table``):
  1. vLLM engines are created with ``max_logprobs >= K`` and sampled with ``logprobs=K``
     (``patches``): every generated token comes with its top-K log-probs under the processed
     (temperature-scaled) distribution, plus the sampled token's own.
  2. ``SingleTurnAgentExecutor.execute``: the engine's ``RequestOutput`` is converted to K ids and
     log-probs per observation token (``topk_rows``; prompt positions get empty slots).
  3. ``SamplesGenerator._process_response_into_experience``: they become the experience fields
     ``rollout_topk_ids`` (int32) and ``rollout_topk_log_probs`` (float32), aligned with
     ``rollout_log_probs`` through the same truncation. Upstream's ``Experience`` is replaced by
     ``TopKExperience`` (the same dataclass plus those two step fields) in every OpenRLHF module, so
     concatenation, the replay buffer, micro-batching and dynamic batching carry them. They are
     stored time-last (``[B, K, A]``): upstream pads step fields along the last dimension, and
     ``remove_padding_in_sequences`` is replaced by a version that trims the last dimension.
  4. ``ActorPPOTrainer.training_step`` announces the micro-batch's ids; ``Actor.forward`` maps them
     to its logits layout (padded or packed) and its log-prob function (``wrappers.log_probs_from_logits``,
     the same kernel for old and current log-probs) gathers pi_theta's log-probs at the ids with the
     same log-normaliser as the sampled tokens; the loss receives them with the experience's top-K fields.
Multi-turn agent executors carry no top-K data; the CLI rejects that combination before Ray.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, List, Optional, Sequence, Tuple

import torch
from openrlhf.trainer.ppo_utils.experience import Experience, tensor_field

from ..corrections.topk import LOG_PROB_FLOOR
from .loss import PENDING, PendingTopK
from .wrappers import LOGITS_TOPK_IDS

EMPTY_ID = -1


@dataclass
class TopKExperience(Experience):
    """Upstream's Experience plus the rollout's top-K, stored time-last: ``(B, K, A)``."""

    rollout_topk_ids: torch.Tensor = tensor_field("step", default=None)  # (B, K, A) int32, -1 = empty slot
    rollout_topk_log_probs: torch.Tensor = tensor_field("step", default=None)  # (B, K, A) log mu at the ids


def topk_rows(token_logprobs: Sequence[Any], k: int) -> Tuple[List[List[int]], List[List[float]]]:
    """vLLM's per-token ``{token_id: Logprob}`` -> K ids and log-probs per generated token.

    vLLM returns the top-K entries (rank 1..K) and, when the sampled token is not among them, that
    token too (rank > K): it is left out here (``rollout_log_probs`` carries it). Fewer than K
    entries leave empty slots (id -1); -inf log-probs (tokens filtered by top-k/top-p) are floored.
    A NaN log-prob stays NaN: the loss drops and counts its token (``corrections.batch.make_topk``)
    instead of reading it as a valid probability-0 slot.
    """
    ids, lps = [], []
    for entries in token_logprobs:
        items = list(entries.items()) if entries is not None else []
        ranked = [(tid, lp) for tid, lp in items if getattr(lp, "rank", None) is not None and lp.rank <= k]
        if len(ranked) < min(k, len(items)):  # ranks missing: take the K most likely
            ranked = sorted(items, key=lambda item: (-_value(item[1]), item[0]))[:k]
        ranked = sorted(ranked, key=lambda item: (-_value(item[1]), item[0]))[:k]
        row_ids = [int(tid) for tid, _ in ranked]
        row_lps = [_stored(lp) for _, lp in ranked]
        ids.append(row_ids + [EMPTY_ID] * (k - len(row_ids)))
        lps.append(row_lps + [0.0] * (k - len(row_lps)))
    return ids, lps


def _value(logprob) -> float:
    """The ranking key: NaN ranks last."""
    value = float(getattr(logprob, "logprob", logprob))
    return value if not math.isnan(value) else -math.inf


def _stored(logprob) -> float:
    """The stored log-prob: floored at ``LOG_PROB_FLOOR``, NaN kept (an unusable slot, counted by the loss)."""
    value = float(getattr(logprob, "logprob", logprob))
    return value if math.isnan(value) else max(value, LOG_PROB_FLOOR)


INT32_MAX = 2**31 - 1


def check_topk_rows(ids: Sequence[Sequence[int]], log_probs: Sequence[Sequence[float]], k: int) -> None:
    """Every row holds exactly K integer ids in ``-1`` (empty) or ``0..2**31-1`` and K log-probs; one-line
    ValueError naming the row otherwise (a row of width 3 read with K = 4 would be silently reshaped)."""
    if len(ids) != len(log_probs):
        raise ValueError(f"top-K rows: {len(ids)} id rows but {len(log_probs)} log-prob rows")
    for t, (row, lps) in enumerate(zip(ids, log_probs)):
        if len(row) != k or len(lps) != k:
            raise ValueError(f"top-K row {t} has {len(row)} ids and {len(lps)} log-probs, expected K = {k}")
        for token in row:
            if isinstance(token, bool) or not isinstance(token, numbers.Integral) or not EMPTY_ID <= token <= INT32_MAX:
                raise ValueError(f"top-K row {t}: token id {token!r} is not an id (an integer in 0..{INT32_MAX}, "
                                 f"or {EMPTY_ID} for an empty slot)")


def experience_fields(response: dict, truncate_length: int, k: int):
    """The two experience tensors ``[1, K, A]`` for one response, aligned like rollout_log_probs."""
    if response.get("rollout_topk_ids") is None:
        raise ValueError(
            "--vllm_logprobs_topk is set but the rollout carries no top-K log-probs (multi-turn agent executors "
            "do not produce them; the vLLM engine may have started without the worker setup hook)"
        )
    id_rows = response["rollout_topk_ids"][1:truncate_length]
    lp_rows = response["rollout_topk_log_probs"][1:truncate_length]
    check_topk_rows(id_rows, lp_rows, k)
    ids = torch.tensor(id_rows, dtype=torch.int32).reshape(-1, k)
    lps = torch.tensor(lp_rows, dtype=torch.float32).reshape(-1, k)
    return ids.T.unsqueeze(0).contiguous(), lps.T.unsqueeze(0).contiguous()


# --------------------------------------------------------------------------- rollout side
class _CapturingEngine:
    """Forwards to the vLLM engine and keeps the last RequestOutput ``generate`` returned."""

    def __init__(self, engine):
        self._engine = engine
        self.last_output = None

    async def generate(self, *args, **kwargs):
        self.last_output = await self._engine.generate(*args, **kwargs)
        return self.last_output

    def __getattr__(self, name):
        return getattr(self._engine, name)


def with_topk_rows(execute, k: int):
    @functools.wraps(execute)
    async def wrapped(self, prompt, label, sampling_params, max_length, hf_tokenizer, llm_engine, images=None):
        engine = _CapturingEngine(llm_engine)
        output = await execute(self, prompt, label, sampling_params, max_length, hf_tokenizer, engine, images)
        generated = engine.last_output.outputs[0] if engine.last_output is not None else None
        if generated is not None and generated.logprobs is not None:
            ids, lps = topk_rows(generated.logprobs, k)
            n_prompt = len(output["observation_tokens"]) - len(ids)
            output["rollout_topk_ids"] = [[EMPTY_ID] * k] * n_prompt + ids
            output["rollout_topk_log_probs"] = [[0.0] * k] * n_prompt + lps
        return output

    return wrapped


def with_topk_experience(process, k: int):
    @functools.wraps(process)
    def wrapped(self, response, **generate_kwargs):
        experience = process(self, response, **generate_kwargs)
        ids, lps = experience_fields(response, generate_kwargs.get("max_len", 2048), k)
        experience.rollout_topk_ids, experience.rollout_topk_log_probs = ids, lps
        return experience

    return wrapped


class MaxLogprobsActor:
    """Stands in for ``RolloutRayActor`` in ``create_vllm_engines``: raises ``max_logprobs`` to K."""

    def __init__(self, actor_cls, k: int):
        self._actor_cls, self._k = actor_cls, k

    def options(self, **options):
        inner = self._actor_cls.options(**options)
        k = self._k

        class _Options:
            def remote(self, *args, **kwargs):
                kwargs["max_logprobs"] = max(int(kwargs.get("max_logprobs") or 0), k)
                return inner.remote(*args, **kwargs)

        return _Options()

    def __getattr__(self, name):
        return getattr(self._actor_cls, name)


# --------------------------------------------------------------------------- replay buffer
def remove_padding_in_sequences(items: List[Experience]) -> List[Experience]:
    """Upstream's right-padding removal, trimming the last dimension (time) of every step field.

    Identical to upstream for its 1-D step fields; also right for the time-last top-K fields.
    """
    for item in items:
        right_pad = item.attention_mask.flip(0).argmax()
        right_pad = None if right_pad == 0 else -right_pad
        for f in fields(type(item)):
            value = getattr(item, f.name)
            if isinstance(value, torch.Tensor) and type(item).is_step_tensor_field(f.name):
                setattr(item, f.name, value[..., :right_pad])
    return items


# --------------------------------------------------------------------------- training side
def with_topk_forward(forward):
    """Actor.forward: place the micro-batch's top-K ids in the logits layout, collect pi_theta there."""

    @functools.wraps(forward)
    def wrapped(self, sequences, action_mask=None, attention_mask=None, *args, **kwargs):
        pending: Optional[PendingTopK] = PENDING.get()
        if pending is None or action_mask is None:
            return forward(self, sequences, action_mask, attention_mask, *args, **kwargs)
        if kwargs.get("ring_attn_group") is not None:
            raise ValueError("--vllm_logprobs_topk does not support ring attention (--ds.ring_attn_size > 1)")
        batch, seqlen = sequences.shape
        num_actions, k = pending.ids.shape[1], pending.ids.shape[2]
        ids = torch.full((batch, seqlen, k), EMPTY_ID, dtype=torch.long, device=sequences.device)
        # action j predicts token j + 1: it sits at logits position seqlen - 1 - num_actions + j
        ids[:, seqlen - 1 - num_actions: seqlen - 1] = pending.ids.to(sequences.device).long()
        packed_rows = None
        if getattr(self, "packing_samples", False):
            packed_rows = torch.nonzero(attention_mask.flatten(), as_tuple=False).flatten()
            ids = ids.reshape(batch * seqlen, k)[packed_rows].unsqueeze(0)
        request = {"ids": ids}
        token = LOGITS_TOPK_IDS.set(request)
        try:
            out = forward(self, sequences, action_mask, attention_mask, *args, **kwargs)
        finally:
            LOGITS_TOPK_IDS.reset(token)
        if "log_probs" not in request:
            raise RuntimeError("the actor forward did not compute its log-probs through the patched "
                               "log_probs_from_logits (float32 logits needed with --vllm_logprobs_topk)")
        gathered = request["log_probs"]
        if packed_rows is not None:
            full = gathered.new_zeros(batch * seqlen, k)
            full[packed_rows] = gathered[0]
            gathered = full.view(batch, seqlen, k)
        pending.log_probs = gathered[:, :-1][:, -num_actions:]
        return out

    return wrapped


# --------------------------------------------------------------------------- patch_table factories
def experience_class(original, settings):
    return TopKExperience


def remove_padding(original, settings):
    return remove_padding_in_sequences


def execute(original, settings):
    return with_topk_rows(original, settings.logprobs_topk)


def process_response(original, settings):
    return with_topk_experience(original, settings.logprobs_topk)


def rollout_actor(original, settings):
    return MaxLogprobsActor(original, settings.logprobs_topk)


def actor_forward(original, settings):
    return with_topk_forward(original)
