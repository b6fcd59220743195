"""The CPU backend: upstream's real ``train_ppo_ray`` loop on a machine without a GPU.

Used by ``--smoke_test`` (and so by ``make demo`` and the end-to-end suite). What runs is
upstream's own code: Ray actors scheduled on GPUs declared as Ray resources, DeepSpeed on its CPU
accelerator (``DS_ACCELERATOR=cpu``, which selects gloo), upstream's experience maker, replay
buffer, ``ppo_train``, weight broadcast and checkpointing. Only what assumes CUDA is replaced,
each replacement an entry of ``patch_table.PATCHES`` under the ``cpu_backend`` condition, so no
GPU code path changes when it is off:

* ``torch.cuda.{set_device, empty_cache, synchronize, current_stream}`` do nothing and
  ``torch.cuda.current_device`` names the CPU (``cuda_noop``, ``cpu_device``);
* DeepSpeed's device mesh is built on ``"cpu"`` (``cpu_device_mesh``);
* the replay buffer's target device is the CPU (``cpu_replay_buffer``);
* the trainer-to-engine weight broadcast group is a gloo group (``gloo_weight_sync_group``), where
  upstream creates a PyNccl communicator;
* the vLLM engine inside upstream's ``RolloutRayActor`` is the stand-in of ``standin_engine``
  (``standin_engine_init``): upstream's actor, executors and output handling run unchanged around it.

This module imports only the standard library at module level; torch is imported by the
replacements when they run.
"""

from __future__ import annotations

import contextvars
import functools
import os
import types

from .gloo_group import GlooBroadcastGroup

# Environment every Ray worker of a CPU run gets (ray_init adds it to the job's runtime env).
WORKER_ENV = {
    "DS_ACCELERATOR": "cpu",  # DeepSpeed's CPU accelerator: gloo collectives, no CUDA
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",  # many small processes share the cores
    # Upstream turns on Ray's zero-copy tensors. On a GPU the receiver's .to(device) copies; on the CPU
    # the received tensor is a writable view of the object store's shared memory, which every reader of
    # the object on the node aliases (Ray warns: "modifiable tensors may cause data corruption").
    "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "0",
}


# Resources a local Ray cluster of a CPU run declares: Ray schedules upstream's placement groups and
# actors on GPUs it is told exist; nothing ever uses them as devices.
DECLARED_GPUS = 16
DECLARED_CPUS = 16


def ray_init_kwargs(kwargs: dict) -> dict:
    """``ray.init`` keywords for a CPU run: declared GPUs and CPUs when it starts a local cluster."""
    if os.environ.get("RAY_ADDRESS") or kwargs.get("address"):
        return kwargs  # an existing cluster declares its own resources
    return {"num_gpus": DECLARED_GPUS, "num_cpus": DECLARED_CPUS, **kwargs}


# --------------------------------------------------------------------------- torch.cuda
def cuda_noop(original, settings):
    """A CUDA call with nothing to do on the CPU (set_device, empty_cache, synchronize, current_stream)."""

    @functools.wraps(original)
    def noop(*args, **kwargs):
        return None

    return noop


# True while upstream's NaiveReplayBuffer.__init__ runs: it formats f"cuda:{current_device()}", which
# needs an index (``cpu_replay_buffer`` then sets its target device to the CPU).
_DEVICE_INDEX_WANTED: contextvars.ContextVar = contextvars.ContextVar("offpolicy_device_index", default=False)


def cpu_device(original, settings):
    """``torch.cuda.current_device()``: upstream moves tensors ``.to()`` it; on the CPU backend, the CPU."""

    @functools.wraps(original)
    def current_device():
        import torch

        return 0 if _DEVICE_INDEX_WANTED.get() else torch.device("cpu")

    return current_device


def cpu_device_mesh(original, settings):
    """``init_device_mesh("cuda", ...)`` in upstream's DeepspeedStrategy, built on the CPU instead."""

    @functools.wraps(original)
    def init_device_mesh(device_type, *args, **kwargs):
        return original("cpu" if device_type == "cuda" else device_type, *args, **kwargs)

    return init_device_mesh


def cpu_replay_buffer(original, settings):
    """``NaiveReplayBuffer.__init__``: its target device is ``cuda:<current_device>``; here the CPU."""

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        import torch

        token = _DEVICE_INDEX_WANTED.set(True)  # the f-string needs an index; replaced just below
        try:
            original(self, *args, **kwargs)
        finally:
            _DEVICE_INDEX_WANTED.reset(token)
        self.target_device = torch.device("cpu")

    return __init__


# --------------------------------------------------------------------------- weight sync over gloo
def gloo_weight_sync_group(original, settings):
    """``stateless_init_process_group`` (upstream: PyNccl) as a gloo group on the CPU backend."""

    @functools.wraps(original)
    def init(master_address, master_port, rank, world_size, device=None):
        return GlooBroadcastGroup(master_address, master_port, rank, world_size)

    return init


# --------------------------------------------------------------------------- the engine
def standin_vllm_module(vllm):
    """A module that is ``vllm`` except that ``AsyncLLMEngine`` / ``AsyncEngineArgs`` are the stand-in."""
    from . import standin_engine

    if getattr(vllm, "AsyncLLMEngine", None) is standin_engine.StandInEngine:
        return vllm
    shim = types.ModuleType("vllm")
    shim.__dict__.update({k: v for k, v in vars(vllm).items() if not k.startswith("__") or k == "__version__"})
    shim.AsyncEngineArgs = standin_engine.EngineArgs
    shim.AsyncLLMEngine = standin_engine.StandInEngine
    return shim


def standin_engine_init(original, settings):
    """``RolloutRayActor.__init__``: upstream's own, with ``vllm`` resolving to the stand-in engine.

    Ray exports a ``@ray.remote`` class by value from the driver (cloudpickle), so in the engine
    process upstream's ``__init__`` reads ``vllm`` from the globals the pickle carried, not from the
    module: replacing the module attribute cannot reach it. The replacement (``rollout_actor_init``)
    is set on the class Ray instantiates, in the driver, before the first engine is created.
    """
    return rollout_actor_init


async def rollout_actor_init(self, *args, **kwargs):
    """Upstream's ``RolloutRayActor.__init__`` with its ``vllm`` pointing at the stand-in engine."""
    from .ray_classes import upstream_actor_method

    upstream = upstream_actor_method(self, "__init__")
    upstream.__globals__["vllm"] = standin_vllm_module(upstream.__globals__["vllm"])
    await upstream(self, *args, **kwargs)


def in_cpu_run() -> bool:
    """Whether this process belongs to a CPU-backend run (the driver sets the variable for its workers)."""
    return os.environ.get("DS_ACCELERATOR") == "cpu"
