"""Divergence-gated corrections: Trust Region Masking and upstream's divergence gates.

TRM (Li et al., "Trust Region Masking for Long-Horizon LLM Reinforcement Learning",
arXiv 2512.23075): a sequence is excluded from the gradient when any of its tokens leaves the
trust region,

    M(y) = 1[max_t D_t <= trm_max_delta] * 1[mean_t D'_t <= trm_avg_delta],

where D_t estimates KL(pi_roll(.|c_t) || pi_ref(.|c_t)) and pi_ref is pi_old
(``trm_reference="old"``) or the detached current policy (``"current"``, the paper's form). Kept
tokens carry the mismatch ratio rho_t. The max criterion uses ``trm_divergence`` (``k2`` by
default, the paper's choice); the mean criterion uses the unbiased ``k3`` when the max uses a
sample-based estimator (the paper's pairing) and the same divergence otherwise. Both thresholds
are length-invariant; the paper's settings are max 0.05 alone, mean 0.001 alone, or max 0.1 with
mean 0.002, keeping the acceptance rate above ~70%.

Upstream OpenRLHF 0.11.2 also gates on the sampled-token ``binary_kl`` / ``tv`` between pi_roll
and pi_old, per token or on the per-sequence mean, with an upper bound only; those gates are the
``*-mask`` corrections below (FlashREINFORCE's trust region is ``seq-binary-kl-mask``).
"""

from __future__ import annotations

from ._torch import torch

from .batch import Correction, PolicyBatch
from .divergences import DIVERGENCES
from .gates import CORRECTIONS, sequence_gate, token_gate, token_ratio
from .registry import Param, positive
from .metrics import sequence_mean
from .stats import in_band, seq_mean

TRM_SOURCE = "TRM: Li et al., 'Trust Region Masking for Long-Horizon LLM Reinforcement Learning', arXiv 2512.23075"


def trm_reference_log_probs(batch: PolicyBatch, reference: str) -> torch.Tensor:
    """log pi_ref: pi_old, or the current policy without its gradient."""
    return batch.old_log_probs if reference == "old" else batch.log_probs.detach()


def token_divergence(batch: PolicyBatch, name: str, log_ref: torch.Tensor) -> torch.Tensor:
    """D_t between pi_roll and pi_ref at every action token (0 off the mask)."""
    fn = DIVERGENCES.get(name).fn
    return fn(batch.rollout_log_probs, log_ref, batch.topk) * batch.mask


def trm_mean_divergence(name: str) -> str:
    """The divergence of the mean criterion: k3 beside a sample-based max, else the same one."""
    return "k3" if DIVERGENCES.get(name).sample_based else name


def _check_trm(cfg) -> None:
    if cfg.params.trm_max_delta is None and cfg.params.trm_avg_delta is None:
        raise ValueError("trm needs trm_max_delta or trm_avg_delta (or both); both are None")
    if DIVERGENCES.get(cfg.params.trm_divergence).needs_topk and cfg.params.trm_reference != "current":
        raise ValueError(
            f"trm_divergence={cfg.params.trm_divergence} compares pi_roll with the current policy, whose log-probs "
            "at the rollout's top-K ids the training forward gathers; set trm_reference=current (the TRM paper's form)"
        )


def _trm_gates_the_current_policy(cfg) -> bool:
    """trm with trm_reference current still gates pi_roll against pi_theta."""
    return cfg.params.trm_reference == "current"


@CORRECTIONS.register(
    "trm",
    threshold=None,
    validate=_check_trm,
    bypass_compatible=_trm_gates_the_current_policy,
    divergence_param="trm_divergence",
    metrics=("trm/accept_rate",),
    source=TRM_SOURCE,
    preset="configs/trm.yaml",
    variants=("configs/trm_avg.yaml", "configs/trm_combined.yaml", "configs/trm_topk.yaml"),
    script="train_trm.sh",
    statistic="`max_t D_t` (and `mean_t D_t`)",
    action="drop sequence above `--trm_max_delta` / `--trm_avg_delta`",
    coefficient="`rho_t`",
    params=(
        Param("trm_max_delta", 0.05, "TRM: reject a sequence if max_t D_t exceeds this", check=positive, optional=True),
        Param(
            "trm_avg_delta", None, "TRM: reject a sequence if mean_t D_t exceeds this", check=positive, optional=True
        ),
        Param(
            "trm_divergence",
            "k2",
            "TRM: per-token divergence for the max criterion",
            type=str,
            choices=lambda: DIVERGENCES.names(for_trm=True),
        ),
        Param(
            "trm_reference",
            "old",
            "TRM: pi_ref in KL(pi_roll || pi_ref): old (pi_old) or current (detached pi_theta)",
            type=str,
            choices=lambda: ("old", "current"),
        ),
    ),
)
def trust_region_mask(batch: PolicyBatch, cfg) -> Correction:
    """TRM: drop y unless max_t D_t <= max_delta and mean_t D'_t <= avg_delta; c_t = rho_t."""
    log_ref = trm_reference_log_probs(batch, cfg.params.trm_reference)
    has_tokens = batch.mask.sum(dim=-1) > 0
    keep = torch.ones_like(has_tokens)
    metrics = {}
    if cfg.params.trm_max_delta is not None:
        # Divergences are >= 0 and 0 off the mask, so the plain row max is the max over the tokens.
        divergence = token_divergence(batch, cfg.params.trm_divergence, log_ref)
        worst = divergence.amax(dim=-1) if divergence.shape[-1] else divergence.sum(dim=-1)
        keep = keep & (worst <= cfg.params.trm_max_delta)
        metrics["trm/max_div"] = sequence_mean(worst, has_tokens)
    if cfg.params.trm_avg_delta is not None:
        avg = seq_mean(token_divergence(batch, trm_mean_divergence(cfg.params.trm_divergence), log_ref), batch.mask)
        keep = keep & (avg <= cfg.params.trm_avg_delta)
        metrics["trm/mean_div"] = sequence_mean(avg, has_tokens)
    metrics["trm/accept_rate"] = sequence_mean(keep, has_tokens)
    out = sequence_gate(batch, keep, token_ratio(batch))
    out.metrics.update(metrics)
    return out


class UpstreamDivergenceGate:
    """Upstream 0.11.2 gating: D(pi_roll, pi_old) per token or its per-sequence mean in [0, delta].

    A module-level class rather than a closure, so a ``PolicyLoss`` holding it pickles (as upstream's does).
    """

    def __init__(self, name: str, per_sequence: bool) -> None:
        self.divergence, self.per_sequence = name, per_sequence
        self.__name__ = f"{'seq_' if per_sequence else ''}{name}_gate"
        self.__qualname__ = self.__name__
        self.__module__ = __name__
        self.__doc__ = (
            f"Drop {'a sequence whose mean' if per_sequence else 'a token whose'} sampled-token {name} "
            "between pi_roll and pi_old exceeds the bound; kept tokens carry rho_t."
        )

    def __call__(self, batch: PolicyBatch, cfg) -> Correction:
        low, high = cfg.threshold
        div = token_divergence(batch, self.divergence, batch.old_log_probs)
        if self.per_sequence:
            return sequence_gate(batch, in_band(seq_mean(div, batch.mask), low, high), token_ratio(batch))
        return token_gate(batch, in_band(div, low, high), token_ratio(batch))

    def __reduce__(self):
        return (UpstreamDivergenceGate, (self.divergence, self.per_sequence))


_UPSTREAM_GATE_SOURCE = "OpenRLHF 0.11.2 is_correction_gating (FlashREINFORCE trust region)"
_STATISTIC = {"binary_tv": "sampled-token TV(pi_roll, pi_old)", "binary_kl": "sampled-token binary KL(pi_roll, pi_old)"}
for _div, _label in (("binary_tv", "tv"), ("binary_kl", "binary-kl")):
    _file = _label.replace("-", "_")
    CORRECTIONS.register(
        f"{_label}-mask",
        threshold="divergence",
        preset=f"configs/{_file}_mask.yaml",
        legacy=True,
        source=_UPSTREAM_GATE_SOURCE,
        statistic=_STATISTIC[_div],
        action="drop token above delta",
        coefficient="`rho_t`",
    )(UpstreamDivergenceGate(_div, per_sequence=False))
    CORRECTIONS.register(
        f"seq-{_label}-mask",
        threshold="divergence",
        preset=f"configs/seq_{_file}_mask.yaml",
        legacy=True,
        source=_UPSTREAM_GATE_SOURCE,
        statistic=f"per-sequence mean of the {_STATISTIC[_div]}",
        action="drop sequence above delta",
        coefficient="`rho_t`",
    )(UpstreamDivergenceGate(_div, per_sequence=True))
