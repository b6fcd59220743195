"""Independent float64 reference implementations, written as plain Python loops.

Nothing here calls ``openrlhf_offpolicy``: every formula is re-derived from SPEC §3 token by
token with ``math``, so a test comparing the vectorised code against these functions checks the
maths, not a copy of it. Inputs are nested lists (or tensors, converted) ``[B][T]``; ``mask``
entries are 0/1. Outputs are nested lists of floats with 0.0 at masked-out positions.
"""

from __future__ import annotations

import math
from typing import List, Sequence

CLAMP = 20.0


def _lists(x) -> List[List[float]]:
    if hasattr(x, "tolist"):
        x = x.tolist()
    return [[float(v) for v in row] for row in x]


def _clamp(v: float) -> float:
    return max(-CLAMP, min(CLAMP, v))


def _exp(v: float) -> float:
    return math.exp(_clamp(v))


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def _sech2(z: float) -> float:
    return 1.0 / math.cosh(z) ** 2 if abs(z) < 350 else 0.0


def _between(v: float, low: float, high: float) -> bool:
    return low <= v <= high


# --------------------------------------------------------------------------- divergences
def k2(log_mu: float, log_pi: float) -> float:
    d = _clamp(log_pi - log_mu)
    return d * d / 2.0


def k3(log_mu: float, log_pi: float) -> float:
    d = _clamp(log_pi - log_mu)
    return math.exp(d) - 1.0 - d


def _binary(log_mu: float, log_pi: float, eps: float = 1e-6):
    p = min(max(math.exp(log_mu), eps), 1 - eps)
    q = min(max(math.exp(log_pi), eps), 1 - eps)
    return p, q


def binary_tv(log_mu: float, log_pi: float) -> float:
    p, q = _binary(log_mu, log_pi)
    return abs(p - q)


def binary_kl(log_mu: float, log_pi: float) -> float:
    p, q = _binary(log_mu, log_pi)
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


DIVERGENCE = {"k2": k2, "k3": k3, "binary_tv": binary_tv, "binary_kl": binary_kl}


# --------------------------------------------------------------------------- corrections
def correction_coefficients(name: str, old, roll, mask, low=0.5, high=5.0, cur=None, **params) -> List[List[float]]:
    """c_t of SPEC §3.1 for every token (0 where rejected or masked out)."""
    old, roll, mask = _lists(old), _lists(roll), _lists(mask)
    cur = _lists(cur) if cur is not None else None
    out = []
    for b in range(len(old)):
        toks = [t for t in range(len(old[b])) if mask[b][t] > 0]
        log_rho = {t: _clamp(old[b][t] - roll[b][t]) for t in toks}
        row = [0.0] * len(old[b])
        total = sum(log_rho.values())
        geo = total / len(toks) if toks else 0.0
        for i, t in enumerate(toks):
            rho_t = math.exp(log_rho[t])
            if name == "tis":
                c = min(max(rho_t, low), high)
            elif name == "icepop":
                c = rho_t if _between(rho_t, low, high) else 0.0
            elif name == "seq-mask-tis":
                c = rho_t if _between(math.exp(geo), low, high) else 0.0
            elif name == "geo-mask":
                c = 1.0 if _between(math.exp(geo), low, high) else 0.0
            elif name in ("reinforce_pro", "prefix-mask"):
                prefix = [log_rho[s] for s in toks[: i + 1]]
                c = rho_t if _between(math.exp(sum(prefix) / len(prefix)), low, high) else 0.0
            elif name == "seq-tis":
                c = min(max(math.exp(min(total, 700.0)), low), high)
            elif name == "seq-mis":
                c = math.exp(total) if low <= math.exp(min(total, 700.0)) <= high else 0.0
            elif name == "trm":
                c = rho_t if _trm_accepts(old[b], roll[b], cur[b] if cur else None, toks, **params) else 0.0
            elif name in ("tv-mask", "binary-kl-mask"):
                fn = binary_tv if name == "tv-mask" else binary_kl
                c = rho_t if _between(fn(roll[b][t], old[b][t]), low, high) else 0.0
            elif name in ("seq-tv-mask", "seq-binary-kl-mask"):
                fn = binary_tv if name == "seq-tv-mask" else binary_kl
                mean_div = sum(fn(roll[b][s], old[b][s]) for s in toks) / len(toks)
                c = rho_t if _between(mean_div, low, high) else 0.0
            else:
                raise KeyError(name)
            row[t] = c
        out.append(row)
    return out


def _trm_accepts(old_row, roll_row, cur_row, toks, trm_max_delta=0.05, trm_avg_delta=None,
                 trm_divergence="k2", trm_reference="old") -> bool:
    ref_row = old_row if trm_reference == "old" else cur_row
    if not toks:
        return True
    ok = True
    if trm_max_delta is not None:
        worst = max(DIVERGENCE[trm_divergence](roll_row[t], ref_row[t]) for t in toks)
        ok = ok and worst <= trm_max_delta
    if trm_avg_delta is not None:
        avg_name = "k3" if trm_divergence in ("k2", "k3") else trm_divergence
        mean = sum(DIVERGENCE[avg_name](roll_row[t], ref_row[t]) for t in toks) / len(toks)
        ok = ok and mean <= trm_avg_delta
    return ok


def trm_acceptance(old, roll, mask, cur=None, **params) -> List[bool]:
    old, roll, mask = _lists(old), _lists(roll), _lists(mask)
    cur = _lists(cur) if cur is not None else None
    out = []
    for b in range(len(old)):
        toks = [t for t in range(len(old[b])) if mask[b][t] > 0]
        out.append(_trm_accepts(old[b], roll[b], cur[b] if cur else None, toks, **params))
    return out


# --------------------------------------------------------------------------- policy losses
def _ppo_token(ratio: float, adv: float, eps_low: float, eps_high: float, dual_clip=None) -> float:
    unclipped = ratio * adv
    clipped = min(max(ratio, 1 - eps_low), 1 + eps_high) * adv
    objective = min(unclipped, clipped)
    if dual_clip is not None and adv < 0:
        objective = max(objective, dual_clip * adv)
    return -objective


def token_losses(loss_type: str, lp, old, adv, mask, roll=None, eps_low=0.2, eps_high=0.2, dual_clip=None,
                 anchor_on_rollout=False, **params) -> List[List[float]]:
    """Per-token policy loss values of SPEC §3.2 (before correction and aggregation)."""
    lp, old, adv, mask = _lists(lp), _lists(old), _lists(adv), _lists(mask)
    roll = _lists(roll) if roll is not None else None
    out = []
    for b in range(len(lp)):
        toks = [t for t in range(len(lp[b])) if mask[b][t] > 0]
        row = [0.0] * len(lp[b])
        if loss_type in ("gspo", "gspo_token"):
            anchor = roll[b] if (loss_type == "gspo" and anchor_on_rollout) else old[b]
            mean_log = sum(lp[b][t] - anchor[t] for t in toks) / max(len(toks), 1)
            s = _exp(mean_log)
        for t in toks:
            a = adv[b][t]
            r = _exp(lp[b][t] - old[b][t])
            if loss_type == "ppo":
                v = _ppo_token(r, a, eps_low, eps_high, dual_clip)
            elif loss_type in ("gspo", "gspo_token"):
                v = _ppo_token(s, a, eps_low, eps_high, dual_clip)
            elif loss_type == "sapo":
                tau = params.get("sapo_tau_pos", 1.0) if a > 0 else params.get("sapo_tau_neg", 1.05)
                v = -(4.0 / tau) * _sigmoid(tau * (r - 1)) * a
            elif loss_type == "cispo":
                lo, hi = params.get("cispo_clip_range", (0.0, 5.0))
                v = -min(max(r, lo), hi) * a * lp[b][t]
            elif loss_type == "dppo":
                v = -dppo_weight(lp[b][t], (roll or old)[b][t], a, **params) * a * lp[b][t]
            elif loss_type == "is_reshape":
                g = is_reshape_gamma(a, _clamp(lp[b][t] - old[b][t]), **params)
                F = kernel_integral(r, params.get("is_reshape_kernel", "sech2"), params.get("is_reshape_width", 1.0))
                v = -a * ((1 - g) * _clamp(lp[b][t] - old[b][t]) + g * F)
            else:
                raise KeyError(loss_type)
            row[t] = v
        out.append(row)
    return out


DPPO_DEFAULT_DELTA = {"binary_tv": 0.15, "binary_kl": 0.05}


def dppo_weight(lp: float, log_mu: float, adv: float, dppo_divergence="binary_tv", dppo_delta=None,
                dppo_ratio_cap=5.0, **_) -> float:
    """M_t * min(r_t, C) with r_t = pi_theta / mu."""
    delta = DPPO_DEFAULT_DELTA[dppo_divergence] if dppo_delta is None else dppo_delta
    r = _exp(lp - log_mu)
    d = DIVERGENCE[dppo_divergence](log_mu, lp)
    masked = d > delta and ((adv > 0 and r > 1) or (adv < 0 and r < 1))
    return 0.0 if masked else min(r, dppo_ratio_cap)


def kernel_value(x: float, kernel: str, w: float) -> float:
    if kernel == "sech2":
        return _sech2(x / w)
    if kernel == "gaussian":
        return math.exp(-x * x / (2 * w * w))
    if kernel == "cauchy":
        return 1.0 / (1.0 + (x / w) ** 2)
    if kernel == "laplace":
        return math.exp(-abs(x) / w)
    raise KeyError(kernel)


def kernel_integral(r: float, kernel: str, w: float, steps: int = 4000) -> float:
    """F_K(r) = int_1^r K(t - 1) dt by composite Simpson quadrature (not the closed form)."""
    if r == 1.0:
        return 0.0
    n = steps if steps % 2 == 0 else steps + 1
    h = (r - 1.0) / n
    acc = kernel_value(0.0, kernel, w) + kernel_value(r - 1.0, kernel, w)
    for i in range(1, n):
        acc += (4 if i % 2 else 2) * kernel_value(i * h, kernel, w)
    return acc * h / 3.0


def is_reshape_gamma(adv: float, log_r: float, is_reshape_gamma=1.0, is_reshape_gamma_mode="fixed",
                     is_reshape_temp=1.0, **_) -> float:
    if is_reshape_gamma_mode == "fixed":
        return is_reshape_gamma
    if is_reshape_gamma_mode == "correctness":
        return is_reshape_gamma + (1 - is_reshape_gamma) * _sigmoid(-adv * log_r / is_reshape_temp)
    if is_reshape_gamma_mode == "advantage":
        return _sigmoid(abs(adv) / is_reshape_temp)
    raise KeyError(is_reshape_gamma_mode)


def gradient_weights(loss_type: str, lp, old, adv, mask, roll=None, **params) -> List[List[float]]:
    """The stated gradient weight w_t: d loss_t / d log pi_theta(y_t) = -A_t w_t (SPEC §3.2)."""
    lp, old, adv, mask = _lists(lp), _lists(old), _lists(adv), _lists(mask)
    roll = _lists(roll) if roll is not None else None
    out = []
    for b in range(len(lp)):
        row = [0.0] * len(lp[b])
        for t in range(len(lp[b])):
            if mask[b][t] <= 0:
                continue
            a = adv[b][t]
            r = _exp(lp[b][t] - old[b][t])
            if loss_type == "sapo":
                tau = params.get("sapo_tau_pos", 1.0) if a > 0 else params.get("sapo_tau_neg", 1.05)
                w = r * _sech2(tau * (r - 1) / 2)
            elif loss_type == "cispo":
                lo, hi = params.get("cispo_clip_range", (0.0, 5.0))
                w = min(max(r, lo), hi)
            elif loss_type == "dppo":
                w = dppo_weight(lp[b][t], (roll or old)[b][t], a, **params)
            elif loss_type == "is_reshape":
                g = is_reshape_gamma(a, _clamp(lp[b][t] - old[b][t]), **params)
                k = kernel_value(r - 1, params.get("is_reshape_kernel", "sech2"), params.get("is_reshape_width", 1.0))
                w = (1 - g) + g * r * k
            else:
                raise KeyError(loss_type)
            row[t] = w
        out.append(row)
    return out


def aggregate(values, mask, token_level: bool = True) -> float:
    """Upstream aggregate_loss with batch-local normalisers."""
    values, mask = _lists(values), _lists(mask)
    if token_level:
        n = sum(sum(row) for row in mask)
        return sum(v * m for rv, rm in zip(values, mask) for v, m in zip(rv, rm)) / max(n, 1)
    seq_means = []
    for rv, rm in zip(values, mask):
        n = sum(rm)
        if n > 0:
            seq_means.append(sum(v * m for v, m in zip(rv, rm)) / n)
    return sum(seq_means) / max(len(seq_means), 1)


def multiply(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> List[List[float]]:
    return [[x * y for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]
