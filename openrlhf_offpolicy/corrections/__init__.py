"""Off-policy corrections and policy losses for LLM RL under rollout/training mismatch.

Pure torch: nothing here imports OpenRLHF. Three registries hold every method; each imports the
modules that register its methods the first time it is read (so the import order never matters),
and lists them in the order of those modules (every other module of the package is imported too,
so a new method needs only its own module):

    CORRECTIONS    mismatch corrections (``vllm_is_correction_type``), modules token_is,
                   sequence_is, prefix_is, trust_region
    POLICY_LOSSES  policy losses (``policy_loss_type``), modules ppo, sapo, cispo, dppo, is_reshape,
                   gmpo, vespo, luspo, cov, expert_iteration
    DIVERGENCES    per-token divergences read by TRM and DPPO, modules divergences, topk
"""

from .aggregation import aggregate_loss
from .batch import Correction, PolicyBatch, Surrogate, TopK, make_topk
from .config import OffPolicyConfig, correction_choices, method_params, resolve_config
from .divergences import DIVERGENCES
from .gates import CORRECTIONS, NO_CORRECTION
from .losses import POLICY_LOSSES
from .registry import Param, Registry

__all__ = [
    "CORRECTIONS",
    "DIVERGENCES",
    "NO_CORRECTION",
    "POLICY_LOSSES",
    "Correction",
    "OffPolicyConfig",
    "Param",
    "PolicyBatch",
    "Registry",
    "Surrogate",
    "TopK",
    "aggregate_loss",
    "make_topk",
    "correction_choices",
    "method_params",
    "resolve_config",
]
