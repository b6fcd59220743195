"""IS-Reshape: bell-shaped gradient weights from localisation kernels ('IS Reshape: from
f-divergence to localisation kernels', v6.0, the seed fork's note).

For a kernel K with K(0) = 1 and its antiderivative F_K(r) = int_1^r K(t - 1) dt, the loss
    loss_t = -A_t [(1 - g) log r_t + g F_K(r_t)],   r_t = pi_theta / pi_old,  g detached,
has the gradient weight (on A_t grad log pi_theta)
    w(r) = (1 - g) + g r K(r - 1):
g = 0 is SFT-like (weight 1), g = 1 is IS with a localised weight that decays for |r - 1| large.
Kernels (width w):
    sech2     K = sech^2(x/w),         F = w tanh((r-1)/w)
    gaussian  K = exp(-x^2 / (2 w^2)), F = w sqrt(pi/2) erf((r-1) / (w sqrt 2))
    cauchy    K = 1 / (1 + x^2/w^2),   F = w arctan((r-1)/w)
    laplace   K = exp(-|x|/w),         F = sign(r-1) w (1 - exp(-|r-1|/w))
g (T = is_reshape_temp, g0 = is_reshape_gamma):
    fixed        g = g0
    correctness  g = g0 + (1 - g0) sigmoid(-A log r / T)   (more RL-like when the policy is "wrong")
    advantage    g = sigmoid(|A| / T)                        (more RL-like for strong reward signal)
SAPO is the special case sech2 with w = 2/tau and g = 1 (same gradients; losses differ by a
constant times A).
"""

from __future__ import annotations

import math
from typing import Optional

from ._torch import torch

from .batch import PolicyBatch, Surrogate
from .losses import POLICY_LOSSES, no_clipping, lazy_token_mean
from .registry import FLOAT32_MAX, FLOAT32_TINY, Param, Registry, positive, unit_interval

KERNELS = Registry("IS-Reshape kernel")


def kernel_width(value: float) -> Optional[str]:
    """A width whose square is a normal float32 and whose 2 w^2 is finite (the gaussian divides by it):
    a narrower or wider kernel makes K(0) = 0/0 or its weights non-finite in float32."""
    if not value > 0:
        return "must be > 0"
    if not FLOAT32_TINY <= value * value <= FLOAT32_MAX / 2:
        return f"must lie in [{math.sqrt(FLOAT32_TINY):.3g}, {math.sqrt(FLOAT32_MAX / 2):.3g}] (w^2 in float32)"
    return None
GAMMA_MODES = Registry("IS-Reshape gamma mode")


@KERNELS.register("sech2")
def sech2_kernel(x: torch.Tensor, w: float):
    """Returns (K(x), F) with x = r - 1."""
    t = torch.tanh(x / w)
    return 1 - t * t, w * t


@KERNELS.register("gaussian")
def gaussian_kernel(x: torch.Tensor, w: float):
    return torch.exp(-(x * x) / (2 * w * w)), w * math.sqrt(math.pi / 2) * torch.erf(x / (w * math.sqrt(2)))


@KERNELS.register("cauchy")
def cauchy_kernel(x: torch.Tensor, w: float):
    u = x / w
    return 1 / (1 + u * u), w * torch.atan(u)


@KERNELS.register("laplace")
def laplace_kernel(x: torch.Tensor, w: float):
    decay = torch.exp(-x.abs() / w)
    return decay, torch.sign(x) * w * (1 - decay)


@GAMMA_MODES.register("fixed")
def fixed_gamma(advantages, log_ratio, g0: float, temp: float):
    return torch.full_like(advantages, g0)


@GAMMA_MODES.register("correctness")
def correctness_gamma(advantages, log_ratio, g0: float, temp: float):
    return g0 + (1 - g0) * torch.sigmoid(-advantages * log_ratio / temp)


@GAMMA_MODES.register("advantage")
def advantage_gamma(advantages, log_ratio, g0: float, temp: float):
    return torch.sigmoid(advantages.abs() / temp)


@POLICY_LOSSES.register(
    "is_reshape",
    source="IS-Reshape: 'IS Reshape: from f-divergence to localisation kernels', v6.0 (the seed fork's note)",
    metrics=("is_reshape/weight_mean",),
    preset="configs/is_reshape.yaml",
    script="train_soft_gate.sh",
    formula="`-A [(1-g) log r + g F_K(r)]`",
    gradient_weight="`(1-g) + g r K(r-1)`",
    params=(
        Param("is_reshape_kernel", "sech2", "IS-Reshape kernel", type=str, choices=KERNELS.names),
        Param("is_reshape_width", 1.0, "IS-Reshape kernel width w", check=kernel_width),
        Param("is_reshape_gamma", 1.0, "IS-Reshape mixing g0 between SFT (0) and kernel IS (1)", check=unit_interval),
        Param(
            "is_reshape_gamma_mode", "fixed", "IS-Reshape rule for g", type=str, choices=GAMMA_MODES.names
        ),
        Param("is_reshape_temp", 1.0, "IS-Reshape temperature T of the adaptive g", check=positive),
    ),
)
def is_reshape_loss(batch: PolicyBatch, cfg) -> Surrogate:
    """loss_t = -A_t [(1 - g) log r_t + g F_K(r_t)]; gradient weight (1 - g) + g r_t K(r_t - 1)."""
    log_ratio = batch.log_ratio
    ratio = log_ratio.exp()
    kernel, integral = KERNELS.get(cfg.params.is_reshape_kernel).fn(ratio - 1, cfg.params.is_reshape_width)
    gamma_fn = GAMMA_MODES.get(cfg.params.is_reshape_gamma_mode).fn
    g = gamma_fn(batch.advantages, log_ratio.detach(), cfg.params.is_reshape_gamma, cfg.params.is_reshape_temp).detach()
    loss = -batch.advantages * ((1 - g) * log_ratio + g * integral)
    weight = (1 - g) + g * ratio.detach() * kernel.detach()
    return Surrogate(
        loss=loss, clipped=no_clipping(batch), metrics={"is_reshape/weight_mean": lazy_token_mean(weight, batch)}
    )
