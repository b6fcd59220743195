"""GLM-5's rollout importance-sampling loss (GLM-5 report, arXiv 2602.15763; SkyRL 1c32924a2,
``rollout_is_policy_loss``).

A CISPO-like policy gradient anchored on the rollout policy, with a hard band instead of a clamp:

    loss_t = -sg(r_mu * 1[LO < r_mu < HI]) * A_t * log pi_theta(y_t),   r_mu = pi_theta / pi_roll,

with strict bounds (a token exactly on a bound is dropped, as in SkyRL). The gradient weight is
``r_mu`` inside the band and 0 outside. It needs no pi_old (useful in async training); it falls
back to pi_old when no rollout log-probs are given. Because it is anchored on pi_roll a mismatch
correction would apply the mismatch twice and is refused; rejection criteria are allowed.
"""

from __future__ import annotations

from typing import Optional, Tuple

from .batch import PolicyBatch, Surrogate
from .losses import POLICY_LOSSES, lazy_token_mean
from .registry import Param
from .stats import safe_exp


def band_below_and_above_one(value: Tuple[float, float]) -> Optional[str]:
    low, high = value
    return None if 0.0 <= low < 1.0 < high else "needs 0 <= LO < 1 < HI"


@POLICY_LOSSES.register(
    "glm5_is",
    accepts_correction=False,
    reads_rollout=True,
    source="GLM-5: arXiv 2602.15763; SkyRL 1c32924a2 rollout_is_policy_loss",
    metrics=("glm5_is/masked_frac",),
    preset="configs/glm5_is.yaml",
    formula="`-sg(r_mu 1[LO < r_mu < HI]) A log pi_theta`, `r_mu = pi_theta / pi_roll`",
    gradient_weight="`r_mu 1[LO < r_mu < HI]`",
    params=(
        Param("glm5_is_clip_range", (0.8, 1.2), "GLM-5 IS: strict band (LO, HI) on r_mu = pi_theta/pi_roll; "
              "tokens outside get weight 0", nargs=2, check=band_below_and_above_one, metavar=("LO", "HI")),
    ),
)
def glm5_is_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """loss_t = -sg(r_mu 1[LO < r_mu < HI]) A_t log pi_theta(y_t); gradient weight r_mu inside the band."""
    low, high = cfg.params.glm5_is_clip_range
    ratio = safe_exp(batch.log_probs.detach() - batch.behaviour_log_probs)
    inside = (ratio > low) & (ratio < high)
    loss = -(ratio * inside) * batch.advantages * batch.log_probs
    outside = ~inside & batch.on
    return Surrogate(loss=loss, clipped=outside, metrics={"glm5_is/masked_frac": lazy_token_mean(outside, batch)})
