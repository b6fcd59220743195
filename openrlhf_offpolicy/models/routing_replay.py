"""Routing replay for Hugging Face MoE blocks: record each MoE layer's top-k experts, or force them.

Why: in an MoE policy a tiny numerical difference between two engines flips a router's top-k
choice, and the token's distribution then changes discretely. Routing replay makes a forward
use a given routing instead of its own:
  * R2 replays the training engine's own routing, recorded by the old-log-prob forward, in the
    training forward (pi_old and pi_theta route alike);
  * R3 replays the rollout engine's routing (vLLM's ``routed_experts``) in both actor forwards.
Sources: Zheng et al. (Qwen), "Stabilizing Reinforcement Learning with LLMs: Formulation and
Practices" (2025), section on MoE routing replay; Ma et al., "Stabilizing MoE Reinforcement
Learning by Aligning Training and Inference Routers" (Rollout Routing Replay, arXiv 2510.11370).

Replay semantics, for router logits ``z`` (one row per token) and replayed ids ``E`` (k per token):
the experts run are exactly ``E``; their gate weights follow the model's own rule evaluated at
``E`` instead of at its own top-k, so the router keeps its gradient through ``z``:
  * Qwen2-MoE / Qwen3-MoE: ``w = softmax(z)[E]``, divided by its sum when ``norm_topk_prob``;
  * Mixtral:               ``w = softmax(z)[E] / sum(softmax(z)[E])`` (always renormalised);
  * DeepSeek-V3:           ``w = sigmoid(z)[E]``, divided by (sum + 1e-20) when ``norm_topk_prob``,
                           times ``routed_scaling_factor`` (the grouped selection and the
                           correction bias only choose experts; replay replaces that choice).
With ``E`` equal to the router's own top-k these reproduce the model's weights exactly.

Layer order: vLLM 0.29's ``routed_experts`` has one row per *decoder layer* (``num_hidden_layers``,
dense layers included; a row is written at its layer's index, so dense rows carry nothing), while
a forward records one row per MoE router. ``replay`` takes either: rows per decoder layer are read
at each router's decoder-layer index (``RoutingReplay.decoder_layers``), dense rows are ignored.
Which decoder layers are MoE follows the model's config (``moe_layer_indices``), and the routers
found in the HF model must sit exactly there, or the model is refused.

Token order: a router sees the flattened hidden states of the forward, one row per input position
(``B * T`` rows in a padded batch, the ``nnz`` non-padding positions in a packed one). Recorded
and replayed ids are ``[N, L, k]`` in that order (L = MoE layers in module order);
``to_router_order`` / ``from_router_order`` convert to and from the per-sequence ``[B, L, k, T]``
layout the experience stores (time last, so upstream pads it like its other step fields).

Cost: the replayed ids stay in their compact storage dtype (uint8 / int16) until each layer's hook
widens its own ``[N, k]`` slice; they are checked once per replayed micro-batch (``replay``), and
copied to the router's device once per forward, so no layer waits on the host.

Counts: each replayed forward keeps, per MoE layer, which positions were replayed and which of
them flipped (the router's own top-k set differs from the replayed set); ``counts(where)`` sums
them over chosen positions. ``integration/runtime/routing.py`` turns them into ``routing/flip_rate`` and
``routing/replayed_frac`` over the positions that score action tokens.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional

import torch

# model_type (HF config) -> router class name, the architectures whose routing rule is mirrored below
SUPPORTED_MODEL_TYPES: Dict[str, str] = {
    "qwen2_moe": "Qwen2MoeTopKRouter",
    "qwen3_moe": "Qwen3MoeTopKRouter",
    "mixtral": "MixtralTopKRouter",
    "deepseek_v3": "DeepseekV3TopkRouter",
}
# config keys that mark a mixture-of-experts model of some other architecture
_MOE_CONFIG_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


class RoutingReplayError(ValueError):
    """A model or routing tensor routing replay cannot handle (one-line message)."""


def supported_names() -> str:
    return ", ".join(SUPPORTED_MODEL_TYPES)


def check_config(config: dict) -> None:
    """Refuse a model routing replay cannot serve, from its HF ``config.json`` contents."""
    model_type = config.get("model_type")
    if model_type in SUPPORTED_MODEL_TYPES:
        experts = config.get("num_experts", config.get("num_local_experts", config.get("n_routed_experts", 1)))
        if not experts:
            raise RoutingReplayError(f"routing replay needs an MoE model, but this {model_type} config has no experts")
        moe_layer_indices(config)  # refuses a layer layout Hugging Face and vLLM place differently
        return
    if any(config.get(key) for key in _MOE_CONFIG_KEYS):
        raise RoutingReplayError(f"routing replay does not support model_type {model_type!r}; "
                                 f"supported MoE architectures: {supported_names()}")
    raise RoutingReplayError(f"routing replay needs an MoE model, but model_type {model_type!r} is dense; "
                             f"supported MoE architectures: {supported_names()}")


def storage_dtype(num_experts: int) -> torch.dtype:
    """uint8 ids for up to 256 experts, else int16."""
    if not 0 < num_experts <= 32768:
        raise RoutingReplayError(f"cannot store expert ids for {num_experts} experts")
    return torch.uint8 if num_experts <= 256 else torch.int16


def bytes_per_token(num_layers: int, top_k: int, num_experts: int) -> int:
    """Storage of one token's routing: one id per (MoE layer, selected expert)."""
    return num_layers * top_k * torch.empty((), dtype=storage_dtype(num_experts)).element_size()


# --------------------------------------------------------------------------- gate-weight rules
def _softmax_weights(router, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    weights = torch.softmax(logits, dtype=torch.float, dim=-1).gather(-1, ids)
    if router.norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(logits.dtype)


def _mixtral_weights(router, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    weights = torch.softmax(logits.float(), dim=-1).gather(-1, ids)
    return weights / weights.sum(dim=-1, keepdim=True)


def _deepseek_v3_weights(router, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    weights = logits.sigmoid().gather(-1, ids)
    if router.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * router.routed_scaling_factor


GATE_RULES: Dict[str, Callable] = {
    "Qwen2MoeTopKRouter": _softmax_weights,
    "Qwen3MoeTopKRouter": _softmax_weights,
    "MixtralTopKRouter": _mixtral_weights,
    "DeepseekV3TopkRouter": _deepseek_v3_weights,
}


def _get(config, key, default=None):
    value = config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)
    return default if value is None else value


def moe_layer_indices(config) -> List[int]:
    """Decoder-layer indices of the MoE layers, from an HF config (object or ``config.json`` dict).

    Rules (as the HF modeling files and vLLM place the sparse blocks):
      * qwen2_moe / qwen3_moe: layer i is MoE iff i not in ``mlp_only_layers`` and
        (i + 1) % ``decoder_sparse_step`` == 0;
      * deepseek_v3: i >= ``first_k_dense_replace`` and i % ``moe_layer_freq`` == 0 (HF's model
        ignores ``moe_layer_freq``; a value other than 1 is refused: HF and vLLM would disagree);
      * mixtral: every layer.
    """
    model_type = _get(config, "model_type")
    layers = range(int(_get(config, "num_hidden_layers", 0)))
    if model_type in ("qwen2_moe", "qwen3_moe"):
        dense, step = set(_get(config, "mlp_only_layers", [])), int(_get(config, "decoder_sparse_step", 1))
        return [i for i in layers if i not in dense and (i + 1) % step == 0]
    if model_type == "deepseek_v3":
        if int(_get(config, "moe_layer_freq", 1)) != 1:
            raise RoutingReplayError("routing replay: deepseek_v3 with moe_layer_freq != 1 places MoE layers "
                                     "differently in Hugging Face (ignores it) and vLLM (honours it)")
        return [i for i in layers if i >= int(_get(config, "first_k_dense_replace", 0))]
    if model_type == "mixtral":
        return list(layers)
    raise RoutingReplayError(f"routing replay does not support model_type {model_type!r}; "
                             f"supported MoE architectures: {supported_names()}")


def _decoder_layer_index(module_name: str) -> int:
    """``model.layers.3.mlp.gate`` -> 3: the decoder-layer index in an HF module name."""
    parts = module_name.split(".")
    for before, part in zip(parts, parts[1:]):
        if before == "layers" and part.isdigit():
            return int(part)
    raise RoutingReplayError(f"routing replay: cannot find the decoder layer of router {module_name!r}")


def hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside wrappers that keep it as ``.module`` (DeepSpeed's engine, whose
    own ``config`` is DeepSpeed's configuration, not the model's)."""
    while getattr(getattr(model, "config", None), "model_type", None) is None and isinstance(
            getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def find_routers(model: torch.nn.Module) -> List[torch.nn.Module]:
    """The MoE routers of a supported HF model, in layer order; one-line error otherwise."""
    model = hf_model(model)
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise RoutingReplayError(f"routing replay does not support model_type {model_type!r}; "
                                 f"supported MoE architectures: {supported_names()}")
    routers = [m for m in model.modules() if type(m).__name__ in GATE_RULES]
    if not routers:
        raise RoutingReplayError(f"routing replay needs an MoE model, but this {model_type} model has no MoE layer")
    return routers


# --------------------------------------------------------------------------- layouts
def influential_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool: attended positions whose routing can change an action log-prob.

    A sequence's last token feeds no later position and its own logits predict nothing scored,
    so its routing is irrelevant; vLLM never computes it (its ``routed_experts`` stop one short).
    """
    mask = attention_mask.bool()
    last = mask.shape[1] - 1 - mask.flip(1).int().argmax(dim=1)
    out = mask.clone()
    out[torch.arange(mask.shape[0], device=mask.device), last] = False
    return out & mask


def to_router_order(per_sequence: torch.Tensor, attention_mask: torch.Tensor, packed: bool) -> torch.Tensor:
    """``[B, L, k, T]`` -> ``[N, L, k]`` rows in the order a router sees the positions."""
    batch, layers, k, length = per_sequence.shape
    if attention_mask.shape != (batch, length):
        raise RoutingReplayError(f"routed experts {tuple(per_sequence.shape)} do not match the attention mask "
                                 f"{tuple(attention_mask.shape)}")
    rows = per_sequence.permute(0, 3, 1, 2).reshape(batch * length, layers, k)
    if packed:
        rows = rows[attention_mask.flatten().bool()]
    return rows


def from_router_order(rows: torch.Tensor, attention_mask: torch.Tensor, packed: bool) -> torch.Tensor:
    """``[N, L, k]`` -> ``[B, L, k, T]`` (positions a packed forward skipped are 0)."""
    batch, length = attention_mask.shape
    if packed:
        full = rows.new_zeros((batch * length, *rows.shape[1:]))
        full[attention_mask.flatten().bool()] = rows
        rows = full
    return rows.reshape(batch, length, *rows.shape[1:]).permute(0, 2, 3, 1).contiguous()


def check_expert_ids(ids: torch.Tensor, num_experts: int, mask: Optional[torch.Tensor] = None,
                     locate: Optional[Callable[[int], str]] = None) -> None:
    """Refuse replayed ids ``[N, L, k]`` that are not integers, lie outside ``0..num_experts-1`` or name
    one expert twice within a token's top-k (at the positions of ``mask``, ``[N]`` bool, default all).

    A ``RoutingReplayError`` names the position (``locate(n)``, e.g. its sample and token), the MoE layer
    and the id. One check per replayed forward, one synchronisation; never per layer.
    """
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise RoutingReplayError(f"replayed expert ids must be integers, got {ids.dtype} (a float id would be "
                                 "truncated, a NaN read as expert 0)")
    rows = ids if mask is None else ids[mask.to(ids.device).bool()]
    positions = None if mask is None else mask.to(ids.device).bool().nonzero().flatten()
    if rows.numel() == 0:
        return
    out_of_range = (rows < 0) | (rows >= num_experts)
    ordered = rows.sort(dim=-1).values
    repeated = (ordered[..., 1:] == ordered[..., :-1]).any(dim=-1)  # [n, L]
    if not bool(out_of_range.any() | repeated.any()):
        return

    def where(row: int, layer: int) -> str:
        n = int(positions[row]) if positions is not None else row
        return f"{locate(n) if locate is not None else f'position {n}'}, MoE layer {layer}"

    if bool(out_of_range.any()):
        row, layer, slot = (int(i) for i in out_of_range.nonzero()[0])
        raise RoutingReplayError(f"replayed expert ids must lie in 0..{num_experts - 1}: {where(row, layer)} "
                                 f"names expert {int(rows[row, layer, slot])}")
    row, layer = (int(i) for i in repeated.nonzero()[0])
    sorted_ids = ordered[row, layer]
    twice = int(sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]][0])
    raise RoutingReplayError(f"replayed expert ids must be distinct within a token's top-k: {where(row, layer)} "
                             f"names expert {twice} twice ({rows[row, layer].tolist()})")


# --------------------------------------------------------------------------- controller
@dataclass
class RoutingCounts:
    """Sums over one forward, exact when added over micro-batches."""

    replayed_pairs: int = 0
    flipped_pairs: int = 0

    def flip_rate(self) -> float:
        return self.flipped_pairs / self.replayed_pairs if self.replayed_pairs else 0.0


class RoutingReplay:
    """Forward hooks on every router of ``model``: idle, recording or replaying.

    Keep a ``replay`` context open across the backward pass when gradient checkpointing is on:
    the recomputed forward must route like the first one. Counts are kept per layer and
    overwritten, so a recomputation does not count twice.
    """

    def __init__(self, model: torch.nn.Module):
        model = hf_model(model)
        self.routers = find_routers(model)
        self.layer_of = {id(r): i for i, r in enumerate(self.routers)}
        names = {id(m): name for name, m in model.named_modules()}
        self.decoder_layers = tuple(_decoder_layer_index(names[id(r)]) for r in self.routers)
        self.num_decoder_layers = int(model.config.num_hidden_layers)
        expected = moe_layer_indices(model.config)
        if list(self.decoder_layers) != expected:
            raise RoutingReplayError(f"routing replay: the model's routers sit at decoder layers "
                                     f"{list(self.decoder_layers)}, its config places MoE layers at {expected}")
        first = self.routers[0]
        self.num_layers, self.top_k, self.num_experts = len(self.routers), first.top_k, first.num_experts
        self.dtype = storage_dtype(self.num_experts)
        self._mode: Optional[str] = None
        self._ids: Optional[torch.Tensor] = None
        self._mask: Optional[torch.Tensor] = None
        self._recorded: Dict[int, torch.Tensor] = {}
        self._counts: Dict[int, tuple] = {}  # layer -> (replayed [N] bool, flipped [N] bool)
        self._on_device: Dict[torch.device, tuple] = {}  # the replayed (ids, mask), copied once per device
        self._count_flips = True
        self._on_forward: Optional[Callable] = None
        self._handles = [r.register_forward_hook(self._hook) for r in self.routers]

    @classmethod
    def attach(cls, model: torch.nn.Module) -> "RoutingReplay":
        """The model's controller, created on first use."""
        existing = model.__dict__.get("_routing_replay")
        if existing is None:
            existing = cls(model)
            model.__dict__["_routing_replay"] = existing
        return existing

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    # ---------------------------------------------------------------- modes
    @contextlib.contextmanager
    def record(self) -> Iterator[None]:
        """Record each layer's own top-k ids (read them with ``recorded``)."""
        self._enter("record")
        self._recorded = {}
        try:
            yield
        finally:
            self._mode = None

    def recorded(self) -> torch.Tensor:
        """``[N, L, k]`` ids of the last recorded forward, in the storage dtype."""
        if len(self._recorded) != self.num_layers:
            raise RoutingReplayError(f"recorded {len(self._recorded)} of {self.num_layers} MoE layers")
        return torch.stack([self._recorded[i] for i in range(self.num_layers)], dim=1)

    @contextlib.contextmanager
    def replay(self, ids: torch.Tensor, mask: Optional[torch.Tensor] = None,
               on_forward: Optional[Callable[["RoutingReplay"], None]] = None,
               locate: Optional[Callable[[int], str]] = None,
               count_flips: bool = True) -> Iterator[None]:
        """Route the positions of ``mask`` (``[N]`` bool, default all) through ``ids`` ``[N, L, k]``.

        ``L`` is the number of MoE layers (one row per router, as ``recorded``), or the number of
        decoder layers (vLLM's layout: each router reads the row of its decoder layer).
        ``on_forward(self)`` is called each time the last MoE layer has routed (after every forward,
        and again after a gradient-checkpointing recomputation, with the same counts). The ids are
        checked once here (``check_expert_ids``; ``locate(n)`` names position n in its messages).
        ``count_flips=False`` skips the flip counting (``counts`` then reports nothing): a forward
        whose counts nobody reads (the old-log-prob forward) does not pay for them."""
        if ids.dim() == 3 and ids.shape[1:] == (self.num_decoder_layers, self.top_k):
            ids = ids[:, list(self.decoder_layers)]
        if ids.dim() != 3 or ids.shape[1:] != (self.num_layers, self.top_k):
            raise RoutingReplayError(f"replayed ids have shape {tuple(ids.shape)}, the model needs "
                                     f"[tokens, {self.num_layers}, {self.top_k}] (one row per MoE layer) or "
                                     f"[tokens, {self.num_decoder_layers}, {self.top_k}] (one per decoder layer)")
        if mask is not None and mask.shape != ids.shape[:1]:
            raise RoutingReplayError(f"replay mask {tuple(mask.shape)} does not match ids {tuple(ids.shape)}")
        check_expert_ids(ids, self.num_experts, mask, locate)
        self._enter("replay")
        self._ids = ids  # compact (uint8 / int16) as stored; each layer widens only its own slice
        self._mask = mask.bool() if mask is not None else None
        self._on_device = {}
        self._counts = {}
        self._on_forward = on_forward
        self._count_flips = count_flips
        try:
            yield
        finally:
            self._mode, self._ids, self._mask, self._on_forward = None, None, None, None
            self._on_device = {}

    def counts(self, where: Optional[torch.Tensor] = None) -> RoutingCounts:
        """Replayed and flipped (token, layer) pairs of the last replayed forward, over the
        positions ``where`` (``[N]`` bool, default all). One read of the device for all layers."""
        if not self._counts:
            return RoutingCounts()
        masks = torch.stack([mask for mask, _ in self._counts.values()])  # [layers, N]
        flips = torch.stack([flips for _, flips in self._counts.values()])
        if where is not None:
            keep = where.to(masks.device).bool()
            masks, flips = masks & keep, flips & keep
        replayed, flipped = torch.stack([masks.sum(), flips.sum()]).tolist()
        return RoutingCounts(int(replayed), int(flipped))

    def _replayed_on(self, device: torch.device):
        """The replayed ids and mask on ``device``, copied there once per replay (not per layer)."""
        if device not in self._on_device:
            mask = self._mask.to(device) if self._mask is not None else None
            self._on_device[device] = (self._ids.to(device, non_blocking=True), mask)
        return self._on_device[device]

    def _enter(self, mode: str) -> None:
        if self._mode is not None:
            raise RoutingReplayError(f"routing replay is already {self._mode}ing")
        self._mode = mode

    # ---------------------------------------------------------------- hook
    def _hook(self, router, inputs, output):
        if self._mode is None:
            return None
        layer = self.layer_of[id(router)]
        logits, _, own = output
        if self._mode == "record":
            self._recorded[layer] = own.detach().to(self.dtype)
            return None
        all_ids, mask = self._replayed_on(own.device)
        if all_ids.shape[0] != own.shape[0]:
            raise RoutingReplayError(f"replayed ids cover {all_ids.shape[0]} positions, MoE layer {layer} routes "
                                     f"{own.shape[0]}")
        ids = all_ids[:, layer].to(own.dtype)  # this layer's [N, k] only, in the router's index dtype
        if mask is not None:
            ids = torch.where(mask.unsqueeze(-1), ids, own)
        else:
            mask = torch.ones(own.shape[0], dtype=torch.bool, device=own.device)
        if self._count_flips:
            flipped = (own.sort(dim=-1).values != ids.sort(dim=-1).values).any(dim=-1) & mask
            self._counts[layer] = (mask, flipped)
        if layer == self.num_layers - 1 and self._on_forward is not None:
            self._on_forward(self)
        weights = GATE_RULES[type(router).__name__](router, logits, ids)
        return logits, weights, ids
