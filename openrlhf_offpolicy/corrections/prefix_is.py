"""The causal prefix gate ``reinforce_pro`` (alias ``prefix-mask``).

rho_pre_t = exp(mean_{s<=t} log rho_s) is the geometric-mean ratio of the prefix that ends at
token t. A token is dropped when its prefix leaves the band, so a mismatch burst removes the
tokens after it but not the ones before it: a causal, finer-grained Geo-Mask. Kept tokens carry
the unclamped token ratio rho_t, as the OpenRLHF 0.9.x fork did.
"""

from __future__ import annotations

from ._torch import torch

from .batch import Correction, PolicyBatch
from .gates import CORRECTIONS, token_gate, token_ratio
from .stats import log_in_band, prefix_mean


def prefix_geo_log_ratio(batch: PolicyBatch) -> torch.Tensor:
    """log rho_pre_t = mean_{s<=t} log rho_s over action tokens, ``[B, T]``."""
    return prefix_mean(batch.log_rho, batch.mask)


@CORRECTIONS.register(
    "reinforce_pro",
    aliases=("prefix-mask",),
    preset="configs/reinforce_pro.yaml",
    script="train_sequence_is.sh",
    statistic="prefix `rho_pre_t`",
    action="drop token outside band",
    coefficient="`rho_t`",
    source="OpenRLHF 0.9.x fork 'reinforce_pro' (prefix-level causal filtering); "
    "Li, 'Trust Region Optimization via Sequence Masking', 2025",
)
def prefix_gate(batch: PolicyBatch, cfg) -> Correction:
    """Drop token t if rho_pre_t is outside ``[low, high]``; kept tokens carry rho_t."""
    low, high = cfg.threshold
    return token_gate(batch, log_in_band(prefix_geo_log_ratio(batch), low, high), token_ratio(batch))
