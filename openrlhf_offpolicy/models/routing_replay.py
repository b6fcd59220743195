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
them over chosen positions. ``integration/routing.py`` turns them into ``routing/flip_rate`` and
``routing/replayed_frac`` over the positions that score action tokens.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional

import torch
import torch.nn.functional as F

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


def find_routers(model: torch.nn.Module) -> List[torch.nn.Module]:
    """The MoE routers of a supported HF model, in layer order; one-line error otherwise."""
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
        self.routers = find_routers(model)
        self.layer_of = {id(r): i for i, r in enumerate(self.routers)}
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
               count_flips: bool = True) -> Iterator[None]:
        """Route the positions of ``mask`` (``[N]`` bool, default all) through ``ids`` ``[N, L, k]``.

        ``on_forward(self)`` is called each time the last MoE layer has routed (after every forward,
        and again after a gradient-checkpointing recomputation, with the same counts).
        ``count_flips=False`` skips the flip counting (``counts`` then reports nothing): a forward
        whose counts nobody reads (the old-log-prob forward) does not pay for them."""
        if ids.dim() != 3 or ids.shape[1:] != (self.num_layers, self.top_k):
            raise RoutingReplayError(f"replayed ids have shape {tuple(ids.shape)}, the model needs "
                                     f"[tokens, {self.num_layers}, {self.top_k}]")
        if mask is not None and mask.shape != ids.shape[:1]:
            raise RoutingReplayError(f"replay mask {tuple(mask.shape)} does not match ids {tuple(ids.shape)}")
        self._check_ids(ids)
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

    def _check_ids(self, ids: torch.Tensor) -> None:
        """Once per replayed micro-batch (not per layer): integer ids within 0..num_experts-1."""
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise RoutingReplayError(f"replayed expert ids must be integers, got {ids.dtype}")
        if ids.numel():
            low, high = torch.aminmax(ids)
            if int(low) < 0 or int(high) >= self.num_experts:
                raise RoutingReplayError(f"replayed expert ids must lie in 0..{self.num_experts - 1}")

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
