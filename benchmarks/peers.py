"""The peers' policy losses, called on our tensors: verl 0.9.1 ``core_algos`` and TRL 1.16.0 ``GRPOTrainer``.

``make bench`` installs both ``--no-deps`` into ``bench_results/peers`` (``PEERS_DIR``), so the test
environment stays untouched. Two ways of loading them without their heavy dependencies:

* verl: ``verl.trainer.ppo.core_algos`` imports ``tensordict``, ``omegaconf``, ``codetiming`` and
  ``orjson`` for types, decorators and config plumbing that the policy-loss functions never
  call. When one of those is not installed, an empty stand-in module is registered for it
  (``stub_missing``) and the loss functions run unchanged; their config is a real
  ``verl.workers.config.ActorConfig`` built without running its ``__init__`` checks.
* TRL: the loss lives inside ``GRPOTrainer._compute_loss(self, model, inputs)``, which first runs
  the model. It is called unbound on a stand-in ``self`` whose ``_get_per_token_logps_and_entropies``
  returns our log-probs, with a single-process accelerator. Everything after the model call,
  including TRL's own metric logging, runs as in training.

Each ``peer_*`` function returns ``fn(inputs) -> loss`` over the bench's inputs dict.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from collections import defaultdict
from typing import Callable, Dict

import torch

PEERS_DIR = os.environ.get(
    "BENCH_PEERS_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench_results", "peers"))
VERL_OPTIONAL = ("tensordict", "omegaconf", "codetiming", "orjson")


class _Anything(types.ModuleType):
    """A stand-in module: every attribute is a new inert class (usable as a type, base or decorator)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = type(name, (), {"__init__": lambda self, *a, **k: None, "__call__": lambda self, *a, **k: None})
        setattr(self, name, value)
        return value


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots):
        self.roots = set(roots)

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _Anything(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def stub_missing(names) -> list:
    """Register stand-ins for the importable-but-unused dependencies that are not installed."""
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    if missing:
        sys.meta_path.append(_StubFinder(missing))
    return missing


def add_peers_dir() -> None:
    if os.path.isdir(PEERS_DIR) and PEERS_DIR not in sys.path:
        sys.path.insert(0, os.path.abspath(PEERS_DIR))


# ----------------------------------------------------------------------------- verl 0.9.1
def load_verl():
    add_peers_dir()
    stubbed = stub_missing(VERL_OPTIONAL)
    core_algos = importlib.import_module("verl.trainer.ppo.core_algos")
    from verl.workers.config import ActorConfig

    return core_algos, ActorConfig, stubbed


def verl_config(ActorConfig, **fields):
    """An ``ActorConfig`` with the fields the policy losses read (its ``__init__`` checks are skipped)."""
    config = object.__new__(ActorConfig)
    defaults = dict(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0, tau_pos=1.0,
                    tau_neg=1.05, global_batch_info={}, policy_loss=None)
    for name, value in {**defaults, **fields}.items():
        object.__setattr__(config, name, value)
    return config


def peer_verl(core_algos, ActorConfig, name: str, loss_agg_mode: str, **fields) -> Callable:
    fn = core_algos.get_policy_loss_fn(name)
    config = verl_config(ActorConfig, **fields)

    def run(inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        out = fn(old_log_prob=inputs["old_log_probs"], log_prob=inputs["log_probs"], advantages=inputs["advantages"],
                 response_mask=inputs["action_mask"], loss_agg_mode=loss_agg_mode, config=config)
        return out[0]

    return run


# ----------------------------------------------------------------------------- TRL 1.16.0
class _Accelerator:
    num_processes = 1
    sync_gradients = True

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather

    @staticmethod
    def reduce(x, reduction="sum"):
        return x


def load_trl():
    add_peers_dir()
    return importlib.import_module("trl.trainer.grpo_trainer").GRPOTrainer


def peer_trl(GRPOTrainer, loss_type: str, importance_sampling_level: str = "token", epsilon_low: float = 0.2,
             epsilon_high: float = 0.2, **args) -> Callable:
    """TRL's ``_compute_loss`` with the model call replaced by our log-probs (no KL, no entropy bonus)."""
    state = {}
    fake = types.SimpleNamespace(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=importance_sampling_level,
        beta=0.0, loss_type=loss_type, epsilon_low=epsilon_low, epsilon_high=epsilon_high,
        args=types.SimpleNamespace(delta=None, sapo_temperature_pos=1.0, sapo_temperature_neg=1.05,
                                   steps_per_generation=1,
                                   **args),
        use_vllm=False, vllm_importance_sampling_correction=False, model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, accelerator=_Accelerator(), aux_loss_enabled=False,
        _entropy_bonus_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)),
        _get_per_token_logps_and_entropies=lambda *a, **k: (state["log_probs"], state["entropies"], None),
    )
    compute = GRPOTrainer._compute_loss

    def run(inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        state["log_probs"] = inputs["log_probs"]
        state["entropies"] = inputs["entropies"]
        mask = inputs["action_mask"]
        batch = {
            "prompt_ids": inputs["prompt_ids"], "prompt_mask": inputs["prompt_mask"],
            "completion_ids": inputs["completion_ids"], "completion_mask": mask,
            "advantages": inputs["advantages"], "old_per_token_logps": inputs["old_log_probs"],
            "num_items_in_batch": inputs["num_tokens"],
        }
        fake._metrics.clear()
        return compute(fake, None, batch)

    return run


def trl_extra_inputs(inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The fields TRL's loss reads besides ours. Its advantages are the same ``[B, T]`` tensor as ours
    (TRL accepts per-token advantages), so both sides do the same amount of work."""
    mask = inputs["action_mask"]
    batch = mask.shape[0]
    return {
        "prompt_ids": torch.zeros(batch, 1, dtype=torch.long), "prompt_mask": torch.ones(batch, 1, dtype=torch.long),
        "completion_ids": torch.zeros_like(mask, dtype=torch.long),
        "entropies": torch.zeros_like(inputs["log_probs"]),
        "num_tokens": mask.sum().float(),
    }
