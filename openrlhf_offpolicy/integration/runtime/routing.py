"""MoE routing replay in OpenRLHF 0.11.2 (``--routing_replay {off,r2,r3}``).

The torch side (hooks on the routers, gate-weight rules) is ``models/routing_replay.py``; this
module carries the routing through upstream's pipeline. The experience field ``routed_experts``
is ``[B, L, k, T]`` (time last, uint8 ids up to 256 experts else int16), aligned with
``sequences``; upstream's ``Experience`` is replaced by ``RoutedExperience`` (the top-K
experience plus that field) in every OpenRLHF module, so concatenation, the replay buffer,
micro-batching and dynamic batching carry it, and ``remove_padding_in_sequences`` trims time.

r3 (rollout routing replay), what is patched along the path:
  1. ``create_vllm_engines``' engines get ``enable_return_routed_experts=True``
     (``RoutedExpertsActor`` stands in for ``RolloutRayActor``).
  2. ``SingleTurnAgentExecutor.execute`` keeps vLLM's ``CompletionOutput.routed_experts``.
     vLLM 0.29 returns ``[prompt_len + response_len - 1, L, k]``: the full prompt's routing at
     prefill, then one row per decode step for the token fed back in; the last sampled token
     is never run through the model. Its row is left 0 and never replayed (its routing changes
     no log-prob, ``influential_positions``).
  3. ``SamplesGenerator._process_response_into_experience`` stores them, truncated like
     ``sequences``.
  4. The experience maker passes each micro-batch's routing to the actor group's forward
     (``BaseModelActor.execute_batch`` hands it to ``Actor.forward``), which replays it.
  5. ``ActorPPOTrainer.training_step`` replays it in the training forward (and in a gradient
     checkpointing recomputation, the replay stays on until the step's backward is done).
r2: the actor's old-log-prob forward (``Actor.forward`` under ``execute_batch``) records its own
routing and returns it with the log-probs; the experience maker stores it on the experience;
``training_step`` replays it.

Metrics, written to ``experience.info`` by ``training_step`` as 0-d tensors (upstream weights
them by the micro-batch's action-token count n_tok, which makes them exact over the step):
  * ``routing/flip_rate`` = (flipped (token, layer) pairs) / (n_tok * L) over the positions whose
    logits score an action token: the training router's own top-k differs from the replayed set;
  * ``routing/replayed_frac`` = (replayed pairs) / (n_tok * L) over the same positions.
"""

from __future__ import annotations

import contextvars
import functools
from dataclasses import dataclass

import numpy as np
import torch
from openrlhf.trainer.ppo_utils.experience import tensor_field

from ...models.routing_replay import (
    RoutingReplay,
    RoutingReplayError,
    from_router_order,
    influential_positions,
    to_router_order,
)
from .topk import TopKExperience
from .factory import settings_free


@dataclass
class RoutedExperience(TopKExperience):
    """Upstream's Experience (plus the top-K fields) with the routed experts, ``(B, L, k, T)``."""

    routed_experts: torch.Tensor = tensor_field("step", default=None)


# --------------------------------------------------------------------------- rollout side (r3)
def routed_experience_class(original, settings):
    """Patch-table factory: ``RoutedExperience`` stands for upstream's ``Experience``."""
    return RoutedExperience


class RoutedExpertsActor:
    """Stands in for ``RolloutRayActor``: its engines return the routed experts."""

    def __init__(self, actor_cls):
        self._actor_cls = actor_cls

    def options(self, **options):
        inner = self._actor_cls.options(**options)

        class _Options:
            def remote(self, *args, **kwargs):
                kwargs["enable_return_routed_experts"] = True
                return inner.remote(*args, **kwargs)

        return _Options()

    def __getattr__(self, name):
        return getattr(self._actor_cls, name)


def with_routed_experts(execute):
    """The single-turn executor, keeping vLLM's routed experts aligned with the observation."""
    from .topk import _CapturingEngine

    @functools.wraps(execute)
    async def wrapped(self, prompt, label, sampling_params, max_length, hf_tokenizer, llm_engine, images=None):
        engine = _CapturingEngine(llm_engine)
        output = await execute(self, prompt, label, sampling_params, max_length, hf_tokenizer, engine, images)
        generated = engine.last_output.outputs[0] if engine.last_output is not None else None
        routed = getattr(generated, "routed_experts", None)
        if routed is None:
            raise RoutingReplayError("--routing_replay r3: vLLM returned no routed_experts (the engine was started "
                                     "without enable_return_routed_experts, or the model has no MoE layer)")
        n_obs = len(output["observation_tokens"])
        if len(routed) != n_obs - 1:
            raise RoutingReplayError(f"--routing_replay r3: vLLM returned routing for {len(routed)} tokens, expected "
                                     f"{n_obs - 1} (prompt + response - 1)")
        output["routed_experts"] = routed
        return output

    return wrapped


def experience_field(routed, truncate_length: int) -> torch.Tensor:
    """vLLM's ``[n_obs - 1, L, k]`` -> ``[1, L, k, T]`` compact ids, the last token's row 0.

    vLLM 0.29 hands out numpy uint8 ids for up to 256 experts, else uint16: kept as uint8, or
    stored as int16 (torch has no general uint16). Checked once per sample (``check_routed_rows``).
    """
    array = check_routed_rows(routed)
    if array.dtype != np.uint8:  # range checked: int16 directly (never through int64)
        array = array.astype(np.int16)
    rows = torch.from_numpy(array if array.flags.writeable else array.copy())  # Ray hands out read-only arrays
    rows = torch.cat([rows, rows.new_zeros((1, *rows.shape[1:]))])[:truncate_length]
    return rows.permute(1, 2, 0).unsqueeze(0).contiguous()


def check_routed_rows(routed) -> np.ndarray:
    """vLLM's routed experts of one sample as an integer array ``[tokens, layers, top_k]``, or a one-line
    ``RoutingReplayError``: the dtype (bools, floats and NaN are refused, never truncated), the shape,
    the range of a stored id and ids repeated within a token's top-k (naming the token and the layer).
    All-zero rows are dense layers' (vLLM's layout); the trainer checks the MoE layers' ids again."""
    array = np.asarray(routed)
    if array.ndim != 3:
        raise RoutingReplayError(f"routed experts must be [tokens, layers, top_k], got {tuple(array.shape)}")
    if array.dtype.kind not in "iu":
        raise RoutingReplayError(f"routed experts must be integer ids, got {array.dtype} (a float id would be "
                                 "truncated, a NaN stored as expert 0)")
    if array.size == 0:
        return array
    out_of_range = (array < 0) | (array > torch.iinfo(torch.int16).max)
    if out_of_range.any():
        token, layer, slot = (int(i) for i in np.argwhere(out_of_range)[0])
        raise RoutingReplayError(f"routed expert id {int(array[token, layer, slot])} out of range at token {token}, "
                                 f"MoE layer {layer}")
    ordered = np.sort(array, axis=-1)
    # vLLM's buffers start at zero and a dense decoder layer never writes its row: an all-zero row is
    # a dense layer's (an MoE layer's top-k ids are distinct, so k >= 2 zeros cannot be routing).
    dense_row = (array == 0).all(axis=-1)
    repeated = (ordered[..., 1:] == ordered[..., :-1]).any(axis=-1) & ~dense_row
    if repeated.any():
        token, layer = (int(i) for i in np.argwhere(repeated)[0])
        raise RoutingReplayError(f"routed experts name one expert twice at token {token}, MoE layer {layer}: "
                                 f"{array[token, layer].tolist()}")
    return array


def with_routed_experience(process):
    @functools.wraps(process)
    def wrapped(self, response, **generate_kwargs):
        experience = process(self, response, **generate_kwargs)
        if response.get("routed_experts") is None:
            raise RoutingReplayError("--routing_replay r3: the rollout carries no routed experts")
        experience.routed_experts = experience_field(response["routed_experts"], generate_kwargs.get("max_len", 2048))
        return experience

    return wrapped


# --------------------------------------------------------------------------- experience maker
_SAMPLES = contextvars.ContextVar("openrlhf_offpolicy_routing_samples", default=None)


def with_routing_samples(make_experience, mode: str):
    """Keep the micro-batches visible to ``_dispatch_forward``; attach r2's recorded routing."""

    @functools.wraps(make_experience)
    def wrapped(self, samples_list, *args, **kwargs):
        state = {"samples": samples_list, "recorded": None}
        token = _SAMPLES.set(state)
        try:
            experiences = make_experience(self, samples_list, *args, **kwargs)
        finally:
            _SAMPLES.reset(token)
        if mode == "r2":
            recorded = state["recorded"]
            if recorded is None or len(recorded) != len(experiences):
                raise RoutingReplayError("--routing_replay r2: the actor's old-log-prob forward returned no routing")
            for experience, routed in zip(experiences, recorded):
                experience.routed_experts = routed
        return experiences

    return wrapped


def with_routing_dispatch(dispatch_forward, mode: str):
    """The actor group's forward gets each micro-batch's routing (r3) or is asked to record (r2)."""

    @functools.wraps(dispatch_forward)
    def wrapped(self, group, sync_condition, **kwargs):
        state = _SAMPLES.get()
        if state is not None and group is self.actor_model_group:
            if mode == "r3":
                kwargs["routed_experts"] = [s.routed_experts for s in state["samples"]]
            else:
                kwargs["record_routing"] = [True] * len(state["samples"])
        return dispatch_forward(self, group, sync_condition, **kwargs)

    return wrapped


def with_recorded_split(flatten_results):
    """r2: the actor's results are ``(log_probs, routed)`` pairs; keep the routing aside."""

    @functools.wraps(flatten_results)
    def wrapped(self, refs, duplicate_factor):
        results = flatten_results(self, refs, duplicate_factor)
        state = _SAMPLES.get()
        if state is not None and results and isinstance(results[0], tuple):
            state["recorded"] = [routed for _, routed in results]
            results = [log_probs for log_probs, _ in results]
        return results

    return wrapped


# --------------------------------------------------------------------------- actor side
def hf_model(actor) -> torch.nn.Module:
    """The Hugging Face model inside upstream's ``Actor`` (possibly wrapped by DeepSpeed)."""
    actor = getattr(actor, "module", actor)
    return actor.model


def is_packed(actor) -> bool:
    return bool(getattr(getattr(actor, "module", actor), "packing_samples", False))


def replay_rows(routed: torch.Tensor, attention_mask: torch.Tensor, packed: bool):
    """(ids ``[N, L, k]``, replay mask ``[N]``) in the actor forward's router order."""
    attention_mask = attention_mask.cpu()
    rows = to_router_order(routed.cpu(), attention_mask, packed)
    where = influential_positions(attention_mask)
    mask = where.flatten()[attention_mask.flatten().bool()] if packed else where.flatten()
    return rows, mask


class RowLocator:
    """Names router row n as "sample b, token t" in the micro-batch (for ``RoutingReplayError``)."""

    def __init__(self, attention_mask: torch.Tensor, packed: bool) -> None:
        self.length = attention_mask.shape[1]
        self.flat = attention_mask.cpu().flatten().bool().nonzero().flatten() if packed else None

    def __call__(self, row: int) -> str:
        flat = int(self.flat[row]) if self.flat is not None else row
        return f"sample {flat // self.length}, token {flat % self.length}"


def scoring_rows(action_mask: torch.Tensor, attention_mask: torch.Tensor, packed: bool) -> torch.Tensor:
    """``[N]`` bool: router positions whose logits score an action token (p scores token p + 1)."""
    batch, length = attention_mask.shape
    scoring = torch.zeros(batch, length, dtype=torch.bool)
    num_actions = action_mask.shape[1]
    scoring[:, length - 1 - num_actions: length - 1] = action_mask.cpu().bool()
    scoring &= attention_mask.cpu().bool()
    return scoring.flatten()[attention_mask.cpu().flatten().bool()] if packed else scoring.flatten()


_OLD_FORWARD = contextvars.ContextVar("openrlhf_offpolicy_routing_old_forward", default=None)
_ROUTING_KEYS = ("routed_experts", "record_routing")


def with_routing_execute_batch(execute_batch):
    """``BaseModelActor.execute_batch``: hand each micro-batch's routing (r3) or a record request
    (r2) to the actor's ``Actor.forward``, one item at a time; r2 returns ``(log_probs, routed)``."""

    @functools.wraps(execute_batch)
    def wrapped(self, method_name, all_data, start_idx, end_idx):
        if method_name != "forward" or not any(key in all_data for key in _ROUTING_KEYS):
            return execute_batch(self, method_name, all_data, start_idx, end_idx)
        data = {key: value for key, value in all_data.items() if key not in _ROUTING_KEYS}
        results = []
        for i in range(start_idx, end_idx):
            request = {"routed": all_data["routed_experts"][i] if "routed_experts" in all_data else None,
                       "record": "record_routing" in all_data, "recorded": None}
            token = _OLD_FORWARD.set(request)
            try:
                (result,) = execute_batch(self, method_name, data, i, i + 1)
            finally:
                _OLD_FORWARD.reset(token)
            if request["record"]:
                if request["recorded"] is None:
                    raise RoutingReplayError("--routing_replay r2: the old-log-prob forward recorded no routing")
                result = (result, request["recorded"])
            results.append(result)
        return results

    return wrapped


def with_routing_actor_forward(forward):
    """``Actor.forward`` in the old-log-prob pass: replays (r3) or records (r2) the routing."""

    @functools.wraps(forward)
    def wrapped(self, sequences, action_mask=None, attention_mask=None, *args, **kwargs):
        request = _OLD_FORWARD.get()
        if request is None:
            return forward(self, sequences, action_mask, attention_mask, *args, **kwargs)
        controller = RoutingReplay.attach(self.model)
        packed = bool(getattr(self, "packing_samples", False))
        if request["record"]:
            with controller.record():
                out = forward(self, sequences, action_mask, attention_mask, *args, **kwargs)
            request["recorded"] = from_router_order(controller.recorded().cpu(), attention_mask.cpu(), packed)
            return out
        if request["routed"] is None:
            raise RoutingReplayError("--routing_replay r3: the old-log-prob forward received no routed experts")
        rows, mask = replay_rows(request["routed"], attention_mask, packed)
        # nobody reads this forward's flip counts
        with controller.replay(rows, mask, locate=RowLocator(attention_mask, packed), count_flips=False):
            return forward(self, sequences, action_mask, attention_mask, *args, **kwargs)

    return wrapped


def with_routing_training_step(training_step):
    """Replay the micro-batch's routing in the training forward (and its backward recomputation)."""

    @functools.wraps(training_step)
    def wrapped(self, experience, *args, **kwargs):
        routed = getattr(experience, "routed_experts", None)
        if routed is None:
            raise RoutingReplayError("routing replay is on but the experience carries no routed_experts")
        controller = RoutingReplay.attach(hf_model(self.actor))
        packed = is_packed(self.actor)
        rows, mask = replay_rows(routed, experience.attention_mask, packed)
        scoring = scoring_rows(experience.action_mask, experience.attention_mask, packed)
        pairs = max(int(experience.action_mask.sum()) * controller.num_layers, 1)
        flip_rate, replayed_frac = torch.zeros(()), torch.zeros(())
        experience.info["routing/flip_rate"] = flip_rate
        experience.info["routing/replayed_frac"] = replayed_frac

        def record_counts(ctrl):
            counts = ctrl.counts(scoring)
            flip_rate.fill_(counts.flipped_pairs / pairs)
            replayed_frac.fill_(counts.replayed_pairs / pairs)

        with controller.replay(rows, mask, on_forward=record_counts,
                               locate=RowLocator(experience.attention_mask, packed)):
            return training_step(self, experience, *args, **kwargs)

    return wrapped


# --------------------------------------------------------------------------- patch-table factories
# The table's one factory shape, (original, settings) -> replacement (patch_table.py).
def routed_experts_actor(original, settings):
    return RoutedExpertsActor(original)


routed_experts_execute = settings_free(with_routed_experts)
routed_experience = settings_free(with_routed_experience)


def routing_samples(original, settings):
    return with_routing_samples(original, settings.routing_replay)


def routing_dispatch(original, settings):
    return with_routing_dispatch(original, settings.routing_replay)


recorded_split = settings_free(with_recorded_split)
routing_execute_batch = settings_free(with_routing_execute_batch)
routing_actor_forward = settings_free(with_routing_actor_forward)
routing_training_step = settings_free(with_routing_training_step)
