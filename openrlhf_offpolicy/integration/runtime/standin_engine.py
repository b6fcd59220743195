"""A CPU stand-in for the vLLM engine inside upstream's ``RolloutRayActor``.

On the CPU backend (``cpu_backend``), upstream's ``RolloutRayActor`` runs unchanged (its
``generate``, ``generate_responses``, executors, reward function, ``init_process_group``,
``update_weight``, ``sleep`` / ``wake_up``...) around this object in place of
``vllm.AsyncLLMEngine``. It generates with transformers on the CPU and answers in vLLM 0.29's
own output classes, computed the way vLLM's sampler computes them (``vllm/v1/sample/sampler.py``):

* logits in float32; ``min_tokens`` masks the stop tokens; then temperature, ``min_p`` and
  top-k / top-p, the latter with vLLM's own PyTorch function ``apply_top_k_top_p_pytorch``
  (what vLLM runs on fewer than 8 rows; on a GPU larger batches take a Triton kernel that cannot
  run here);
* ``processed_logprobs``: the log-softmax of those processed logits (``raw_logprobs``: of the raw
  logits); the sampled token plus the top-``logprobs`` tokens with their 1-based ranks, as a list
  of ``{id: Logprob}`` or, with ``SamplingParams(flat_logprobs=True)``, a ``FlatLogprobs``;
* ``routed_experts`` with ``enable_return_routed_experts``: ``[prompt + response - 1,
  num_hidden_layers, top_k]``, one row per decoder layer, dense layers' rows 0, ids ``uint8``
  up to 256 experts (else ``uint16``), as vLLM's ``RoutedExpertsCapturer`` fills them.

Weights arrive through upstream's broadcast (``init_process_group`` / ``update_weight``
collective RPCs) over gloo, and are checked against the engine dtype as vLLM's worker does.

The engine's mismatch against the trainer is chosen by ``--smoke_mismatch`` (settings
``smoke_mismatch``, ``smoke_mismatch_scale``):

* ``none``:    the log-probs returned are recomputed with one full-sequence forward in the
               trainer's dtype, the computation the trainer's old-log-prob forward does, so
               ``rho = pi_old / pi_roll`` is 1 up to float rounding;
* ``bf16``:    the engine's own incremental (KV-cache) decode, as vLLM decodes, in the engine
               dtype: the numerical mismatch of two kernels;
* ``weights``: ``bf16`` plus Gaussian noise of relative scale ``scale`` on every weight the
               engine loads (a stale or quantised rollout policy);
* ``router``:  ``bf16`` plus Gaussian noise of standard deviation ``scale`` on the router logits
               of every MoE layer (routing flips between the engines).
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Dict, List, Optional

MISMATCH_MODES = ("none", "bf16", "weights", "router")
DEFAULT_SCALE = {"none": 0.0, "bf16": 0.0, "weights": 0.02, "router": 1.0}
_TORCH_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32", "auto": "bfloat16"}


class EngineArgs:
    """``vllm.AsyncEngineArgs``: keeps the keyword arguments upstream passes."""

    def __init__(self, *args, **kwargs):
        if args:
            kwargs.setdefault("model", args[0])
        self.kwargs = kwargs


class _OutputProcessor:
    def __init__(self):
        self.unfinished = 0

    def get_num_unfinished_requests(self) -> int:
        return self.unfinished


def mismatch_settings():
    """(mode, scale) of this run, from the installed settings."""
    from . import patches

    settings = patches.current()
    mode = getattr(settings, "smoke_mismatch", "bf16") or "bf16"
    scale = getattr(settings, "smoke_mismatch_scale", None)
    return mode, DEFAULT_SCALE[mode] if scale is None else float(scale)


class StandInEngine:
    """``vllm.AsyncLLMEngine`` on the CPU, with transformers (see the module docstring)."""

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> "StandInEngine":
        return cls(**engine_args.kwargs)

    def __init__(self, model: str, dtype: str = "bfloat16", seed: int = 0, logprobs_mode: str = "raw_logprobs",
                 max_logprobs: int = 20, enable_return_routed_experts: bool = False, trust_remote_code: bool = True,
                 **ignored):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)
        self.dtype = getattr(torch, _TORCH_DTYPES[str(dtype)])
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=self.dtype, attn_implementation="eager",
                                                          trust_remote_code=trust_remote_code).eval()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        except Exception:  # noqa: BLE001 - text is cosmetic; token ids are what upstream uses
            self.tokenizer = None
        self.stop_ids = _stop_token_ids(self.model, self.tokenizer)
        self.logprobs_mode = logprobs_mode
        self.max_logprobs = max_logprobs
        self.return_routed_experts = enable_return_routed_experts
        self.mode, self.scale = mismatch_settings()
        self.generator = torch.Generator().manual_seed(int(seed))
        self.noise = torch.Generator().manual_seed(int(seed) + 7919)
        self.routing = _RoutingCapture(self.model, self) if (enable_return_routed_experts or self.mode == "router") \
            else None
        self.output_processor = _OutputProcessor()
        self._sleeping = False
        self._weight_group = None
        self._lock = asyncio.Lock()
        self._requests = 0
        if self.mode == "weights":
            self._perturb_all_weights()

    # ------------------------------------------------------------------ engine control
    async def is_sleeping(self) -> bool:
        return self._sleeping

    async def sleep(self, level: int = 1) -> None:
        self._sleeping = True

    async def wake_up(self, tags=None) -> None:
        self._sleeping = False

    async def reset_prefix_cache(self) -> bool:
        return True

    async def pause_generation(self, *args, **kwargs) -> None:
        return None

    async def resume_generation(self, *args, **kwargs) -> None:
        return None

    async def collective_rpc(self, method: str, timeout=None, args=(), kwargs=None):
        """The worker extension's RPCs (upstream's ``WorkerWrap``), on the CPU; one result per worker."""
        handler = getattr(self, f"_rpc_{method}", None)
        if handler is None:
            raise NotImplementedError(f"the CPU stand-in engine does not implement collective_rpc({method!r})")
        return [await asyncio.to_thread(handler, *args, **(kwargs or {}))]

    def _rpc_init_process_group(self, master_address, master_port, rank_offset, world_size, group_name,
                                backend="gloo", use_ray=False):
        from .gloo_group import GlooBroadcastGroup

        if use_ray:
            raise NotImplementedError("--vllm.sync_with_ray is not supported by the CPU stand-in engine")
        self._weight_group = GlooBroadcastGroup(master_address, master_port, rank_offset, world_size)

    def _rpc_update_weight(self, name, dtype, shape, empty_cache=False):
        import torch

        if dtype != self.dtype:  # vLLM's WorkerWrap asserts the same
            raise AssertionError(f"mismatch dtype: src {dtype}, dst {self.dtype}")
        weight = torch.empty(shape, dtype=dtype)
        self._weight_group.broadcast(weight, src=0)
        with torch.no_grad():
            target = self.model.get_parameter(name)
            target.copy_(weight)
            if self.mode == "weights":
                self._perturb(target)

    def _perturb_all_weights(self) -> None:
        import torch

        with torch.no_grad():
            for param in self.model.parameters():
                self._perturb(param)

    def _perturb(self, param) -> None:
        import torch

        noise = torch.randn(param.shape, generator=self.noise, dtype=torch.float32)
        param.add_((noise * self.scale * param.float().abs().mean()).to(param.dtype))

    # ------------------------------------------------------------------ generation
    async def generate(self, prompt, sampling_params, request_id=None, **kwargs):
        """One request: yields its final ``RequestOutput`` (vLLM streams partial ones first)."""
        self.output_processor.unfinished += 1
        try:
            async with self._lock:
                output = await asyncio.to_thread(self._generate, list(prompt["prompt_token_ids"]), sampling_params,
                                                 request_id or f"standin-{self._requests}")
                self._requests += 1
        finally:
            self.output_processor.unfinished -= 1
        yield output

    def _generate(self, prompt_ids: List[int], params, request_id: str):
        import torch
        from vllm.outputs import CompletionOutput, RequestOutput

        if params.logprobs is not None and params.logprobs > self.max_logprobs:
            raise ValueError(f"Requested sample logprobs of {params.logprobs}, which is greater than max allowed: "
                             f"{self.max_logprobs}")
        max_tokens = params.max_tokens if params.max_tokens is not None else 16
        generator = self.generator if params.seed is None else torch.Generator().manual_seed(params.seed)
        tokens: List[int] = []
        step_logprobs = []  # [V] float32 per generated token (the engine's own decode)
        finish = "length"
        if self.routing is not None:
            self.routing.start()
        with torch.no_grad():
            past, step_input = None, torch.tensor([prompt_ids])
            for _ in range(max_tokens):
                out = self.model(input_ids=step_input, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1].float()
                processed, logprobs = self._process(logits, params, len(tokens))
                token = self._sample(processed, params, generator)
                tokens.append(token)
                step_logprobs.append(logprobs)
                if token in self.stop_ids and not params.ignore_eos:
                    finish = "stop"
                    break
                step_input = torch.tensor([[token]])
            routed = self.routing.stop(len(prompt_ids) + len(tokens) - 1) if self.routing is not None else None
            if self.mode == "none" and params.logprobs is not None:
                step_logprobs = self._recompute_logprobs(prompt_ids, tokens, params)
        logprobs = self._logprobs_output(tokens, step_logprobs, params) if params.logprobs is not None else None
        text = self.tokenizer.decode(tokens, skip_special_tokens=params.skip_special_tokens) if self.tokenizer else ""
        cumulative = float(sum(lp[t] for lp, t in zip(step_logprobs, tokens))) if params.logprobs is not None \
            else None
        completion = CompletionOutput(index=0, text=text, token_ids=tokens, cumulative_logprob=cumulative,
                                      logprobs=logprobs, routed_experts=routed, finish_reason=finish,
                                      stop_reason=tokens[-1] if finish == "stop" else None)
        return RequestOutput(request_id=request_id, prompt=None, prompt_token_ids=prompt_ids, prompt_logprobs=None,
                             outputs=[completion], finished=True)

    def _process(self, logits, params, generated: int):
        """(processed logits to sample from, the log-probs vLLM reports), as vLLM's ``Sampler``."""
        import torch
        from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

        raw = logits
        logits = logits.clone()
        if generated < (params.min_tokens or 0):
            logits[list(self.stop_ids)] = float("-inf")
        if params.temperature >= 1e-5:
            logits = logits / params.temperature
            if params.min_p and params.min_p > 0:
                probs = logits.softmax(-1)
                logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
            top_k = params.top_k if params.top_k and params.top_k > 0 else None
            top_p = params.top_p if params.top_p < 1.0 else None
            if top_k is not None or top_p is not None:
                k = torch.tensor([top_k]) if top_k is not None else None
                p = torch.tensor([top_p], dtype=torch.float32) if top_p is not None else None
                logits = apply_top_k_top_p_pytorch(logits.unsqueeze(0), k, p)[0]
        source = logits if self.logprobs_mode == "processed_logprobs" else raw
        return logits, torch.log_softmax(source, dim=-1)

    @staticmethod
    def _sample(logits, params, generator) -> int:
        import torch

        if params.temperature < 1e-5:
            return int(logits.argmax())
        probs = torch.softmax(logits, dim=-1)
        return int(torch.multinomial(probs, 1, generator=generator))

    def _recompute_logprobs(self, prompt_ids, tokens, params):
        """``none``: the reported log-probs from one full-sequence forward (the trainer's computation)."""
        import torch

        ids = torch.tensor([prompt_ids + tokens])
        logits = self.model(input_ids=ids, use_cache=False).logits[0, len(prompt_ids) - 1: -1].float()
        return [self._process(row, params, i)[1] for i, row in enumerate(logits)]

    def _logprobs_output(self, tokens, step_logprobs, params):
        """The sampled token plus the top-``params.logprobs`` tokens of every position, with ranks."""
        import torch
        from vllm.logprobs import FlatLogprobs, Logprob

        flat = bool(getattr(params, "flat_logprobs", False))
        out = FlatLogprobs() if flat else []
        for token, logprobs in zip(tokens, step_logprobs):
            sampled_lp = float(logprobs[token])
            entries: Dict[int, Logprob] = {token: Logprob(sampled_lp, rank=int((logprobs > logprobs[token]).sum()) + 1)}
            if params.logprobs:
                top = torch.topk(logprobs, params.logprobs)
                for rank, (tid, lp) in enumerate(zip(top.indices.tolist(), top.values.tolist()), start=1):
                    entries.setdefault(tid, Logprob(lp, rank=rank))
            out.append(entries)
        return out


def _stop_token_ids(model, tokenizer) -> set:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


class _RoutingCapture:
    """Records each MoE router's top-k ids per position (and adds router noise in ``router`` mode).

    Rows follow vLLM: one per decoder layer (``config.num_hidden_layers``), dense layers left 0.
    """

    _LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")

    def __init__(self, model, engine: StandInEngine):
        import torch

        from ...models.routing_replay import find_routers

        self.engine = engine
        self.num_layers = model.config.num_hidden_layers
        names = {id(m): n for n, m in model.named_modules()}
        self.routers = find_routers(model)
        self.layer_of = {}
        for router in self.routers:
            match = self._LAYER.search(names[id(router)])
            if match is None:
                raise ValueError(f"cannot find the decoder layer of router {names[id(router)]}")
            self.layer_of[id(router)] = int(match.group(1))
        first = self.routers[0]
        self.top_k, self.num_experts = first.top_k, first.num_experts
        self.np_dtype = "uint8" if self.num_experts <= 256 else "uint16"
        self.rows: Optional[List] = None
        for router in self.routers:
            router.register_forward_hook(self._hook)
        self._torch = torch

    def _hook(self, router, inputs, output):
        if self.rows is None:
            return None
        logits, weights, ids = output
        if self.engine.mode == "router":
            from ...models.routing_replay import GATE_RULES

            torch = self._torch
            noisy = logits.float() + self.engine.scale * torch.randn(logits.shape, generator=self.engine.noise)
            scores = noisy.sigmoid() if type(router).__name__ == "DeepseekV3TopkRouter" else noisy.softmax(-1)
            ids = torch.topk(scores, router.top_k, dim=-1).indices
            weights = GATE_RULES[type(router).__name__](router, logits, ids)
        self.rows.append((self.layer_of[id(router)], ids.detach().to("cpu")))
        return (logits, weights, ids) if self.engine.mode == "router" else None

    def start(self) -> None:
        self.rows = []

    def stop(self, positions: int):
        import numpy as np

        rows, self.rows = self.rows or [], None
        if not self.engine.return_routed_experts:
            return None
        out = np.zeros((positions, self.num_layers, self.top_k), dtype=self.np_dtype)
        filled = {}
        for layer, ids in rows:  # successive forwards of a layer cover successive positions
            start = filled.get(layer, 0)
            n = min(ids.shape[0], positions - start)
            if n > 0:
                out[start:start + n, layer] = ids[:n].numpy().astype(self.np_dtype)
            filled[layer] = start + ids.shape[0]
        return out


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
