"""Carry the rollout's top-K log-probs from vLLM to the loss (``--vllm_logprobs_topk K``,
docs/design.md, "Top-K divergences").

Path of the data, and what is patched on it (the ``topk_on`` entries of ``patch_table``):
  1. vLLM engines are created with ``max_logprobs >= K`` and sampled with ``logprobs=K``
     (``patches``): every generated token comes with its top-K log-probs under the processed
     (temperature-scaled) distribution, plus the sampled token's own.
  2. ``SingleTurnAgentExecutor.execute``: the engine's ``RequestOutput`` is converted to the sampled
     token's log-prob and K ids and log-probs per observation token (``rollout_arrays``; prompt
     positions get empty slots). The rollout asks vLLM for ``flat_logprobs`` (``wrappers.sampling_params``):
     flat lists of ids and log-probs, ``[sampled, top-1 .. top-K]`` per token, which are converted with
     array slicing, with no per-token Python object on the engine actor's event loop; vLLM's per-token
     dicts (an engine without flat log-probs) take the per-token path (``topk_rows``). The top-K
     fields travel as numpy arrays (``[n_obs, K]`` int32 / float32).
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

import copy
import functools
import math
import numbers
from array import array
from dataclasses import dataclass, fields
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from openrlhf.trainer.ppo_utils.experience import Experience, tensor_field

from ...corrections.topk import LOG_PROB_FLOOR
from .loss import PENDING, PendingTopK
from .contexts import LOGITS_TOPK_IDS
from .factory import settings_free

EMPTY_ID = -1


@dataclass
class TopKExperience(Experience):
    """Upstream's Experience plus the rollout's top-K, stored time-last: ``(B, K, A)``."""

    rollout_topk_ids: torch.Tensor = tensor_field("step", default=None)  # (B, K, A) int32, -1 = empty slot
    rollout_topk_log_probs: torch.Tensor = tensor_field("step", default=None)  # (B, K, A) log mu at the ids


def topk_rows(token_logprobs: Sequence[Any], k: int) -> Tuple[List[List[int]], List[List[float]]]:
    """vLLM's per-token ``{token_id: Logprob}`` -> K ids and log-probs per generated token (the
    per-token path, for engines that return dicts).

    vLLM returns the top-K entries (rank 1..K) and, when the sampled token is not among them, that
    token too (rank > K): it is left out here (``rollout_log_probs`` carries it). The entries are in
    rank order (vLLM's, as in its flat log-probs); without ranks, the K most likely (ties by id).
    Fewer than K entries leave empty slots (id -1); -inf log-probs (tokens filtered by top-k/top-p)
    are floored. A NaN log-prob stays NaN: the loss drops and counts its token
    (``corrections.batch.make_topk``) instead of reading it as a valid probability-0 slot.
    """
    ids, lps = [], []
    for entries in token_logprobs:
        items = list(entries.items()) if entries is not None else []
        ranked = [(lp.rank, tid, lp) for tid, lp in items if getattr(lp, "rank", None) is not None and lp.rank <= k]
        if len(ranked) < min(k, len(items)):  # ranks missing: take the K most likely
            ranked = [(i, tid, lp) for i, (tid, lp) in
                      enumerate(sorted(items, key=lambda item: (-_value(item[1]), item[0])))]
        ranked = sorted(ranked, key=lambda item: item[:2])[:k]
        row_ids = [int(tid) for _, tid, _ in ranked]
        row_lps = [_stored(lp) for _, _, lp in ranked]
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


def check_topk_arrays(ids: np.ndarray, log_probs: np.ndarray, k: int) -> None:
    """``check_topk_rows`` for the arrays ``with_rollout_arrays`` builds, vectorised (no per-id loop)."""
    if ids.ndim != 2 or ids.shape[1] != k or log_probs.shape != ids.shape:
        raise ValueError(f"top-K rows have ids {tuple(ids.shape)} and log-probs {tuple(log_probs.shape)}, "
                         f"expected [tokens, K = {k}]")
    if ids.dtype.kind not in "iu":
        raise ValueError(f"top-K token ids must be integers, got {ids.dtype}")
    bad = (ids < EMPTY_ID) | (ids > INT32_MAX)
    if ids.size and bad.any():
        t, slot = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"top-K row {t}: token id {int(ids[t, slot])} is not an id (an integer in 0..{INT32_MAX}, "
                         f"or {EMPTY_ID} for an empty slot)")


@dataclass
class RolloutArrays:
    """One generation's rollout log-probs: ``sampled`` ``[A]`` float32 (log mu of each generated
    token), and with K > 0 ``topk_ids`` ``[A, K]`` int32 (-1 = empty slot) / ``topk_log_probs``
    ``[A, K]`` float32 (floored)."""

    sampled: np.ndarray
    topk_ids: Optional[np.ndarray] = None
    topk_log_probs: Optional[np.ndarray] = None


def rollout_arrays(logprobs, token_ids: Sequence[int], k: int) -> RolloutArrays:
    """vLLM's ``CompletionOutput.logprobs`` -> ``RolloutArrays`` (flat arrays or per-token dicts).

    Sampled log-probs follow upstream's extraction (the generated token's entry, 0.0 when it is
    absent); top-K rows follow ``topk_rows``. ``FlatLogprobs`` laid out as vLLM 0.29 writes them,
    ``[sampled, rank 1, .., rank n]`` per position with the same n everywhere, is converted by
    slicing; anything else (dicts, a different layout) goes through the per-token path.
    """
    arrays = _flat_rollout_arrays(logprobs, token_ids, k) if hasattr(logprobs, "start_indices") else None
    if arrays is not None:
        return arrays
    positions = list(logprobs)
    sampled = []
    for token, entries in zip(token_ids, positions):  # upstream's own extraction
        entry = entries.get(token) if entries is not None else None
        sampled.append(entry.logprob if entry is not None else 0.0)
    arrays = RolloutArrays(np.asarray(sampled, dtype=np.float32))
    if k:
        ids, lps = topk_rows(positions[: len(sampled)], k)
        arrays.topk_ids = np.asarray(ids, dtype=np.int32).reshape(-1, k)
        arrays.topk_log_probs = np.asarray(lps, dtype=np.float32).reshape(-1, k)
    return arrays


def _flat_rollout_arrays(flat, token_ids: Sequence[int], k: int) -> Optional[RolloutArrays]:
    """The slicing path over vLLM's ``FlatLogprobs`` (None when its layout is not the expected one)."""
    n_tokens = len(token_ids)
    starts = np.asarray(flat.start_indices[:n_tokens], dtype=np.int64)
    ends = np.asarray(flat.end_indices[:n_tokens], dtype=np.int64)
    if len(starts) != n_tokens:
        return None
    if n_tokens == 0:
        return RolloutArrays(np.zeros(0, np.float32), *((np.zeros((0, k), np.int32), np.zeros((0, k), np.float32))
                                                        if k else (None, None)))
    width = int(ends[0] - starts[0])
    if width < 1 + k or np.any(ends - starts != width) or np.any(starts[1:] != ends[:-1]):
        return None
    lo, hi = int(starts[0]), int(ends[-1])
    whole = lo == 0 and hi == len(flat.logprobs) == len(flat.token_ids)  # the usual case: no list copy
    # array(typecode, list) is the fastest list -> buffer conversion (one C loop, no Python objects)
    values = np.frombuffer(array("d", flat.logprobs if whole else flat.logprobs[lo:hi]), dtype=np.float64)
    ids = np.frombuffer(array("q", flat.token_ids if whole else flat.token_ids[lo:hi]), dtype=np.int64)
    values, ids = values.reshape(n_tokens, width), ids.reshape(n_tokens, width)
    if not np.array_equal(ids[:, 0], np.asarray(token_ids, dtype=np.int64)):
        return None
    arrays = RolloutArrays(values[:, 0].astype(np.float32))
    if k:
        top = values[:, 1: 1 + k]
        if not np.all(top[:, 1:] <= top[:, :-1]):  # rank order; a NaN also fails this
            return None
        arrays.topk_ids = ids[:, 1: 1 + k].astype(np.int32)
        arrays.topk_log_probs = np.maximum(top, LOG_PROB_FLOOR).astype(np.float32)
    return arrays


def experience_fields(response: dict, truncate_length: int, k: int):
    """The two experience tensors ``[1, K, A]`` for one response, aligned like rollout_log_probs."""
    if response.get("rollout_topk_ids") is None:
        raise ValueError(
            "--vllm_logprobs_topk is set but the rollout carries no top-K log-probs (multi-turn agent executors "
            "do not produce them; the vLLM engine may have started without the worker setup hook)"
        )
    id_rows = response["rollout_topk_ids"][1:truncate_length]
    lp_rows = response["rollout_topk_log_probs"][1:truncate_length]
    if isinstance(id_rows, np.ndarray) and isinstance(lp_rows, np.ndarray):
        check_topk_arrays(id_rows, lp_rows, k)
    else:
        check_topk_rows(id_rows, lp_rows, k)
    ids = torch.as_tensor(np.asarray(id_rows, dtype=np.int32).reshape(-1, k))
    lps = torch.as_tensor(np.asarray(lp_rows, dtype=np.float32).reshape(-1, k))
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


class _ConvertingEngine:
    """Forwards to the vLLM engine; converts the generation's log-probs to ``RolloutArrays`` and hands
    the executor the output without them (so upstream's per-token extraction does not run)."""

    def __init__(self, engine, k: int):
        self._engine, self._k = engine, k
        self.arrays: Optional[RolloutArrays] = None

    async def generate(self, prompt_token_ids, sampling_params, *args, **kwargs):
        output = await self._engine.generate(prompt_token_ids, sampling_params, *args, **kwargs)
        generated = output.outputs[0] if output is not None and output.outputs else None
        if generated is None or generated.logprobs is None or getattr(sampling_params, "logprobs", None) is None:
            return output
        self.arrays = rollout_arrays(generated.logprobs, generated.token_ids, self._k)
        stripped = copy.copy(generated)
        stripped.logprobs = None
        output = copy.copy(output)
        output.outputs = [stripped, *output.outputs[1:]]
        return output

    def __getattr__(self, name):
        return getattr(self._engine, name)


def with_rollout_arrays(execute, k: int):
    """The single-turn executor with the rollout log-probs (and top-K rows when K > 0) converted by
    ``rollout_arrays``: ``rollout_log_probs`` as upstream builds it (0.0 on prompt positions), and the
    top-K fields ``[n_obs, K]`` (empty slots on prompt positions)."""

    @functools.wraps(execute)
    async def wrapped(self, prompt, label, sampling_params, max_length, hf_tokenizer, llm_engine, images=None):
        engine = _ConvertingEngine(llm_engine, k)
        output = await execute(self, prompt, label, sampling_params, max_length, hf_tokenizer, engine, images)
        arrays = engine.arrays
        if arrays is None:
            return output
        n_prompt = len(output["observation_tokens"]) - len(arrays.sampled)
        output["rollout_log_probs"] = [0.0] * n_prompt + arrays.sampled.tolist()
        if k:
            output["rollout_topk_ids"] = np.concatenate([np.full((n_prompt, k), EMPTY_ID, np.int32), arrays.topk_ids])
            output["rollout_topk_log_probs"] = np.concatenate([np.zeros((n_prompt, k), np.float32),
                                                               arrays.topk_log_probs])
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
    return with_rollout_arrays(original, settings.logprobs_topk)


def process_response(original, settings):
    return with_topk_experience(original, settings.logprobs_topk)


def rollout_actor(original, settings):
    return MaxLogprobsActor(original, settings.logprobs_topk)


actor_forward = settings_free(with_topk_forward)
