"""Independent float64 reference implementations, written as plain Python loops.

Nothing here calls ``openrlhf_offpolicy``: every formula is re-derived from its paper (cited in
the method's docstring and the README tables) token by token with ``math``, so a test comparing the
vectorised code against these functions checks the maths, not a copy of it. Inputs are nested lists
(or tensors, converted) ``[B][T]``; ``mask`` entries are 0/1. Outputs are nested lists of floats with
0.0 at masked-out positions.
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
class Row:
    """One sequence: its valid positions ``toks`` and log rho_t = clamp(log pi_old - log pi_roll)."""

    def __init__(self, old, roll, cur, mask):
        self.old, self.roll, self.cur = old, roll, cur
        self.toks = [t for t in range(len(old)) if mask[t] > 0]
        self.log_rho = {t: _clamp(old[t] - roll[t]) for t in self.toks}
        self.total = sum(self.log_rho.values())
        self.geo = self.total / len(self.toks) if self.toks else 0.0

    def rho(self, t):
        return math.exp(self.log_rho[t])


def _tis(row, t, low, high, **_):
    return min(max(row.rho(t), low), high)


def _icepop(row, t, low, high, **_):
    return row.rho(t) if _between(row.rho(t), low, high) else 0.0


def _seq_mask_tis(row, t, low, high, **_):
    return row.rho(t) if _between(math.exp(row.geo), low, high) else 0.0


def _geo_mask(row, t, low, high, **_):
    return 1.0 if _between(math.exp(row.geo), low, high) else 0.0


def _prefix(row, t, low, high, **_):
    prefix = [row.log_rho[s] for s in row.toks if s <= t]
    return row.rho(t) if _between(math.exp(sum(prefix) / len(prefix)), low, high) else 0.0


def _seq_tis(row, t, low, high, **_):
    return min(max(math.exp(min(row.total, 700.0)), low), high)


def _seq_mis(row, t, low, high, **_):
    return math.exp(row.total) if low <= math.exp(min(row.total, 700.0)) <= high else 0.0


def _trm(row, t, low, high, **params):
    accepted = _trm_accepts(row.old, row.roll, row.cur, row.toks, **_trm_params(params))
    return row.rho(t) if accepted else 0.0


def _token_divergence_gate(fn):
    def gate(row, t, low, high, **_):
        return row.rho(t) if _between(fn(row.roll[t], row.old[t]), low, high) else 0.0
    return gate


def _seq_divergence_gate(fn):
    def gate(row, t, low, high, **_):
        mean_div = sum(fn(row.roll[s], row.old[s]) for s in row.toks) / len(row.toks)
        return row.rho(t) if _between(mean_div, low, high) else 0.0
    return gate


def segments(toks):
    """The maximal runs of consecutive positions in ``toks`` (a row's turns)."""
    out = []
    for t in toks:
        if out and out[-1][-1] == t - 1:
            out[-1].append(t)
        else:
            out.append([t])
    return out


def _segment_log_ratio(row, t):
    """mean of log rho_u over the segment holding t."""
    seg = next(s for s in segments(row.toks) if t in s)
    return sum(row.log_rho[u] for u in seg) / len(seg)


def _segment_tis(row, t, low, high, **_):
    return min(max(math.exp(_segment_log_ratio(row, t)), low), high)


def _segment_mis(row, t, low, high, **_):
    rho_seg = math.exp(_segment_log_ratio(row, t))
    return rho_seg if _between(rho_seg, low, high) else 0.0


# c_t of every registered correction on a kept token t of ``row`` (0 where rejected), by name.
CORRECTIONS = {
    "none": lambda row, t, low, high, **_: 1.0,
    "tis": _tis,
    "icepop": _icepop,
    "seq-mask-tis": _seq_mask_tis,
    "geo-mask": _geo_mask,
    "reinforce_pro": _prefix,
    "seq-tis": _seq_tis,
    "seq-mis": _seq_mis,
    "trm": _trm,
    "tv-mask": _token_divergence_gate(binary_tv),
    "binary-kl-mask": _token_divergence_gate(binary_kl),
    "seq-tv-mask": _seq_divergence_gate(binary_tv),
    "seq-binary-kl-mask": _seq_divergence_gate(binary_kl),
    "segment-tis": _segment_tis,
    "segment-mis": _segment_mis,
}
CORRECTIONS["prefix-mask"] = CORRECTIONS["reinforce_pro"]


def _trm_params(params):
    return {k: v for k, v in params.items() if k.startswith("trm_")}


def correction_coefficients(name: str, old, roll, mask, low=0.5, high=5.0, cur=None, **params) -> List[List[float]]:
    """c_t of correction ``name`` for every token (0 where rejected or masked out)."""
    old, roll, mask = _lists(old), _lists(roll), _lists(mask)
    cur = _lists(cur) if cur is not None else [None] * len(old)
    out = []
    for b in range(len(old)):
        row = Row(old[b], roll[b], cur[b], mask[b])
        values = [0.0] * len(old[b])
        for t in row.toks:
            values[t] = CORRECTIONS[name](row, t, low, high, **params)
        out.append(values)
    return out


def _trm_accepts(old_row, roll_row, cur_row, toks, trm_max_delta=0.05, trm_avg_delta=None,
                 trm_divergence="k2", trm_reference="old", **_) -> bool:
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


class LossBatch:
    """Nested-list inputs of a policy loss, with every sequence's valid positions."""

    def __init__(self, lp, old, adv, mask, roll=None, eps_low=0.2, eps_high=0.2, dual_clip=None,
                 anchor_on_rollout=False):
        self.lp, self.old, self.adv, self.mask = _lists(lp), _lists(old), _lists(adv), _lists(mask)
        self.roll = _lists(roll) if roll is not None else None
        self.eps_low, self.eps_high, self.dual_clip = eps_low, eps_high, dual_clip
        self.anchor_on_rollout = anchor_on_rollout
        self.toks = [[t for t in range(len(row)) if row[t] > 0] for row in self.mask]
        self.n_tokens = max(sum(len(t) for t in self.toks), 1)
        self.n_seqs = max(sum(1 for t in self.toks if t), 1)

    def zeros(self):
        return [[0.0] * len(row) for row in self.lp]

    def r(self, b, t):
        return _exp(self.lp[b][t] - self.old[b][t])

    def log_r(self, b, t):
        return _clamp(self.lp[b][t] - self.old[b][t])

    def valid(self):
        return [(b, t) for b in range(len(self.lp)) for t in self.toks[b]]


def _per_token(value):
    """A loss whose token values depend on that token only: value(batch, b, t, **params)."""
    def loss(batch, **params):
        out = batch.zeros()
        for b, t in batch.valid():
            out[b][t] = value(batch, b, t, **params)
        return out
    return loss


def _ppo(batch, b, t, **_):
    return _ppo_token(batch.r(b, t), batch.adv[b][t], batch.eps_low, batch.eps_high, batch.dual_clip)


def _gspo_ratio(batch, b, anchor_rollout=False):
    anchor = batch.roll[b] if anchor_rollout else batch.old[b]
    toks = batch.toks[b]
    return _exp(sum(batch.lp[b][t] - anchor[t] for t in toks) / max(len(toks), 1))


def _gspo(batch, b, t, **_):
    s = _gspo_ratio(batch, b, batch.anchor_on_rollout)
    return _ppo_token(s, batch.adv[b][t], batch.eps_low, batch.eps_high, batch.dual_clip)


def _gspo_token(batch, b, t, **_):
    return _ppo_token(_gspo_ratio(batch, b), batch.adv[b][t], batch.eps_low, batch.eps_high, batch.dual_clip)


def _sapo_tau(a, params):
    return params.get("sapo_tau_pos", 1.0) if a > 0 else params.get("sapo_tau_neg", 1.05)


def _sapo(batch, b, t, **params):
    a, r = batch.adv[b][t], batch.r(b, t)
    tau = _sapo_tau(a, params)
    return -(4.0 / tau) * _sigmoid(tau * (r - 1)) * a


def _cispo(batch, b, t, **params):
    lo, hi = params.get("cispo_clip_range", (0.0, 5.0))
    return -min(max(batch.r(b, t), lo), hi) * batch.adv[b][t] * batch.lp[b][t]


def _dppo(batch, b, t, **params):
    mu = (batch.roll or batch.old)[b][t]
    return -dppo_weight(batch.lp[b][t], mu, batch.adv[b][t], **params) * batch.adv[b][t] * batch.lp[b][t]


def _is_reshape(batch, b, t, **params):
    a, log_r = batch.adv[b][t], batch.log_r(b, t)
    g = is_reshape_gamma(a, log_r, **params)
    F = kernel_integral(batch.r(b, t), params.get("is_reshape_kernel", "sech2"), params.get("is_reshape_width", 1.0))
    return -a * ((1 - g) * log_r + g * F)


def _gmpo_log_ratio(batch, b, t, gmpo_clip_range=(-0.4, 0.4)):
    """(l'_t, inside): the pessimistically clipped log-ratio and whether the gradient flows."""
    lo, hi = gmpo_clip_range
    lr = batch.log_r(b, t)
    a = batch.adv[b][t]
    clipped = min(max(lr, lo), hi)
    if (a > 0 and clipped < lr) or (a < 0 and clipped > lr):
        return clipped, False
    return lr, True


def _gmpo_sequence(batch, b, **params):
    toks = batch.toks[b]
    p = {k: v for k, v in params.items() if k == "gmpo_clip_range"}
    ratio = math.exp(sum(_gmpo_log_ratio(batch, b, t, **p)[0] for t in toks) / len(toks))
    mean_adv = sum(batch.adv[b][t] for t in toks) / len(toks)
    return ratio, mean_adv


def _gmpo(batch, b, t, **params):
    ratio, mean_adv = _gmpo_sequence(batch, b, **params)
    return -mean_adv * ratio


def _vespo_phi(batch, b, t, vespo_k=(2.0, 3.0), vespo_lambda=(3.0, 2.0), **_):
    log_w = sum(batch.log_r(b, s) for s in batch.toks[b])
    log_w = min(max(log_w, math.log(1e-8)), 20.0)
    k, lam = (vespo_k[0], vespo_lambda[0]) if batch.adv[b][t] >= 0 else (vespo_k[1], vespo_lambda[1])
    w = math.exp(log_w)
    return w ** k * math.exp(lam * (1.0 - w))


def _vespo(batch, b, t, **params):
    return -_vespo_phi(batch, b, t, **params) * batch.adv[b][t] * batch.lp[b][t]


def _luspo(batch, b, t, **_):
    return len(batch.toks[b]) * _gspo_token(batch, b, t)


def _covariances(batch):
    """cov_t = (A_t - mean A)(log pi_theta - mean log pi_theta) over the valid tokens, row-major."""
    valid = batch.valid()
    mean_a = sum(batch.adv[b][t] for b, t in valid) / len(valid)
    mean_lp = sum(batch.lp[b][t] for b, t in valid) / len(valid)
    return {(b, t): (batch.adv[b][t] - mean_a) * (batch.lp[b][t] - mean_lp) for b, t in valid}


def clip_cov_selection(batch, clip_cov_ratio=0.0002, clip_cov_lb=1.0, clip_cov_ub=5.0, **_):
    """The tokens Clip-Cov takes the gradient from, drawn with ``torch.randperm`` (same seed as the code)."""
    import torch

    cov = _covariances(batch)
    candidates = [
        (b, t) for b, t in batch.valid()
        if clip_cov_lb < cov[(b, t)] < clip_cov_ub
        and -_ppo(batch, b, t) == batch.r(b, t) * batch.adv[b][t]  # not clipped by PPO
    ]
    if not candidates:
        return set()
    count = max(1, int(clip_cov_ratio * len(batch.valid())))
    order = torch.randperm(len(candidates)).tolist()
    return {candidates[i] for i in order[:count]}


def kl_cov_selection(batch, kl_cov_ratio=0.0002, **_):
    cov = _covariances(batch)
    count = max(1, int(kl_cov_ratio * len(cov)))
    return set(sorted(cov, key=lambda bt: -cov[bt])[:count])


def _clip_cov(batch, **params):
    selected = clip_cov_selection(batch, **params)
    out = batch.zeros()
    for b, t in batch.valid():
        out[b][t] = 0.0 if (b, t) in selected else _ppo(batch, b, t)
    return out


def _kl_cov(batch, kl_cov_coef=1.0, **params):
    selected = kl_cov_selection(batch, **params)
    out = batch.zeros()
    for b, t in batch.valid():
        out[b][t] = -batch.r(b, t) * batch.adv[b][t] + (kl_cov_coef * abs(batch.log_r(b, t)) if (b, t) in selected
                                                         else 0.0)
    return out


def _mu(batch, b, t):
    return (batch.roll or batch.old)[b][t]


def _glm5_is_weight(batch, b, t, glm5_is_clip_range=(0.8, 1.2), **_):
    lo, hi = glm5_is_clip_range
    r = _exp(batch.lp[b][t] - _mu(batch, b, t))
    return r if lo < r < hi else 0.0


def _glm5_is(batch, b, t, **params):
    return -_glm5_is_weight(batch, b, t, **params) * batch.adv[b][t] * batch.lp[b][t]


def _prime_masked(batch, b, t, loss_type, params):
    diff = math.exp(batch.lp[b][t]) - math.exp(_mu(batch, b, t))
    if loss_type == "ipo":
        return abs(diff) > params.get("ipo_delta", 0.1)
    low, high = params.get("prime_dppo_delta", (0.2, 0.2))
    return diff > high if batch.adv[b][t] > 0 else diff < -low


def _prime_tau(loss_type, params):
    return params.get("ipo_tau" if loss_type == "ipo" else "prime_dppo_tau", 1e-3)


def _prime(loss_type):
    def loss(batch, b, t, **params):
        d = batch.lp[b][t] - _mu(batch, b, t)
        keep = 0.0 if _prime_masked(batch, b, t, loss_type, params) else 1.0
        return -keep * batch.adv[b][t] * _exp(d) + _prime_tau(loss_type, params) * d * d
    return loss


def _prime_gradient(loss_type):
    def gradient(batch, b, t, **params):
        d = batch.lp[b][t] - _mu(batch, b, t)
        keep = 0.0 if _prime_masked(batch, b, t, loss_type, params) else 1.0
        return -keep * batch.adv[b][t] * _exp(d) + 2 * _prime_tau(loss_type, params) * d
    return gradient


def _dro(batch, b, t, dro_beta=0.05, **_):
    d = batch.lp[b][t] - batch.old[b][t]
    return -(batch.adv[b][t] * batch.lp[b][t] - dro_beta / 2 * d * d)


def _topr_weight(batch, b, t):
    return 1.0 if batch.adv[b][t] >= 0 else min(batch.r(b, t), 1.0)


def _topr(batch, b, t, **_):
    return -_topr_weight(batch, b, t) * batch.adv[b][t] * batch.lp[b][t]


def _a3po_parts(batch, b, t, a3po_alpha=0.5, a3po_behave_cap=5.0, **_):
    """(r_t, w_t, kept): r = pi_theta/pi_prox, w = pi_prox/pi_roll, kept = w <= cap."""
    mu, lp = _mu(batch, b, t), batch.lp[b][t]
    log_prox = mu + a3po_alpha * (lp - mu)
    w = _exp(log_prox - mu)
    return _exp(lp - log_prox), w, w <= a3po_behave_cap


def _a3po(batch, b, t, **params):
    r, w, kept = _a3po_parts(batch, b, t, **params)
    return _ppo_token(r, batch.adv[b][t], batch.eps_low, batch.eps_high, batch.dual_clip) * w if kept else 0.0


def _a3po_gradient(batch, b, t, **params):
    r, w, kept = _a3po_parts(batch, b, t, **params)
    a = batch.adv[b][t]
    return -a * r * w if kept and _ppo_unclipped(r, a, batch.eps_low, batch.eps_high) else 0.0


def _expert_iteration(batch, b, t, **_):
    return -batch.lp[b][t] if batch.adv[b][t] > 0 else 0.0


# Per-token values of every registered policy loss, by name: fn(LossBatch, **method params) -> [B][T]
# (before the correction coefficient and the aggregation).
LOSSES = {
    "ppo": _per_token(_ppo),
    "gspo": _per_token(_gspo),
    "gspo_token": _per_token(_gspo_token),
    "sapo": _per_token(_sapo),
    "cispo": _per_token(_cispo),
    "dppo": _per_token(_dppo),
    "is_reshape": _per_token(_is_reshape),
    "gmpo": _per_token(_gmpo),
    "vespo": _per_token(_vespo),
    "luspo": _per_token(_luspo),
    "clip_cov": _clip_cov,
    "kl_cov": _kl_cov,
    "expert_iteration": _per_token(_expert_iteration),
    "glm5_is": _per_token(_glm5_is),
    "prime_dppo": _per_token(_prime("prime_dppo")),
    "ipo": _per_token(_prime("ipo")),
    "dro": _per_token(_dro),
    "topr": _per_token(_topr),
    "a3po": _per_token(_a3po),
}


def token_losses(loss_type: str, lp, old, adv, mask, roll=None, eps_low=0.2, eps_high=0.2, dual_clip=None,
                 anchor_on_rollout=False, **params) -> List[List[float]]:
    """Per-token policy loss values (before correction and aggregation)."""
    batch = LossBatch(lp, old, adv, mask, roll, eps_low, eps_high, dual_clip, anchor_on_rollout)
    return LOSSES[loss_type](batch, **params)


# --------------------------------------------------------------------------- gradients
def _ppo_unclipped(ratio, a, eps_low, eps_high):
    return ratio * a <= min(max(ratio, 1 - eps_low), 1 + eps_high) * a


def _token_mean_gradient(value):
    """d(token-mean loss)/d log pi_theta(y_t) = value(batch, b, t) / N."""
    def gradient(batch, **params):
        out = batch.zeros()
        for b, t in batch.valid():
            out[b][t] = value(batch, b, t, **params) / batch.n_tokens
        return out
    return gradient


def _weighted(batch, b, t, loss_type, **params):
    """-A_t w_t with w_t the stated gradient weight of ``loss_type``."""
    w = gradient_weights(loss_type, [batch.lp[b]], [batch.old[b]], [batch.adv[b]], [batch.mask[b]],
                         roll=[batch.roll[b]] if batch.roll else None, **params)[0][t]
    return -batch.adv[b][t] * w


def _ppo_gradient(batch, b, t, **_):
    a, r = batch.adv[b][t], batch.r(b, t)
    return -a * r if _ppo_unclipped(r, a, batch.eps_low, batch.eps_high) else 0.0


def _gspo_gradient(batch, **_):
    """L = mean_i (1/n_i) sum_t -min(s_i A_t, clip(s_i) A_t); d s_i / d lp_u = s_i / n_i."""
    out = batch.zeros()
    for b, toks in enumerate(batch.toks):
        if not toks:
            continue
        s, n = _gspo_ratio(batch, b), len(toks)
        total = sum(-batch.adv[b][t] * s / n for t in toks
                    if _ppo_unclipped(s, batch.adv[b][t], batch.eps_low, batch.eps_high))
        for u in toks:
            out[b][u] = total / n / batch.n_seqs
    return out


def _gspo_token_gradient(batch, **_):
    """L = mean_i (1/n_i) sum_t -min(s_it A_t, ...), s_it carries only its own token's gradient s_i."""
    out = batch.zeros()
    for b, toks in enumerate(batch.toks):
        s, n = _gspo_ratio(batch, b), len(toks)
        for u in toks:
            if _ppo_unclipped(s, batch.adv[b][u], batch.eps_low, batch.eps_high):
                out[b][u] = -batch.adv[b][u] * s / n / batch.n_seqs
    return out


def _luspo_gradient(batch, **_):
    """L = mean_i sum_t -min(s_i A_t, clip(s_i) A_t): GSPO's gradient times n_i."""
    out = _gspo_gradient(batch)
    return [[v * len(toks) for v in row] for row, toks in zip(out, batch.toks)]


def _gmpo_gradient(batch, **params):
    """L = mean_i -Abar_i R_i, R_i = exp(mean_t l'_t): d/d lp_u = -Abar_i R_i / n_i where l'_u = l_u."""
    out = batch.zeros()
    for b, toks in enumerate(batch.toks):
        if not toks:
            continue
        ratio, mean_adv = _gmpo_sequence(batch, b, **params)
        for u in toks:
            if _gmpo_log_ratio(batch, b, u, **{k: v for k, v in params.items() if k == "gmpo_clip_range"})[1]:
                out[b][u] = -mean_adv * ratio / len(toks) / batch.n_seqs
    return out


def _clip_cov_gradient(batch, **params):
    selected = clip_cov_selection(batch, **params)
    out = batch.zeros()
    for b, t in batch.valid():
        if (b, t) not in selected:
            out[b][t] = _ppo_gradient(batch, b, t) / batch.n_tokens
    return out


def _kl_cov_gradient(batch, kl_cov_coef=1.0, **params):
    selected = kl_cov_selection(batch, **params)
    out = batch.zeros()
    for b, t in batch.valid():
        g = -batch.adv[b][t] * batch.r(b, t)
        if (b, t) in selected:
            g += kl_cov_coef * math.copysign(1.0, batch.log_r(b, t))
        out[b][t] = g / batch.n_tokens
    return out


# d(aggregated loss)/d log pi_theta(y_t) of every registered policy loss without a correction, under
# its own aggregation (token-mean; seq-mean-token-mean for the sequence-level losses), by name.
GRADIENTS = {
    "ppo": _token_mean_gradient(_ppo_gradient),
    "gspo": _gspo_gradient,
    "gspo_token": _gspo_token_gradient,
    "sapo": _token_mean_gradient(lambda batch, b, t, **p: _weighted(batch, b, t, "sapo", **p)),
    "cispo": _token_mean_gradient(lambda batch, b, t, **p: _weighted(batch, b, t, "cispo", **p)),
    "dppo": _token_mean_gradient(lambda batch, b, t, **p: _weighted(batch, b, t, "dppo", **p)),
    "is_reshape": _token_mean_gradient(lambda batch, b, t, **p: _weighted(batch, b, t, "is_reshape", **p)),
    "gmpo": _gmpo_gradient,
    "vespo": _token_mean_gradient(lambda batch, b, t, **p: -_vespo_phi(batch, b, t, **p) * batch.adv[b][t]),
    "luspo": _luspo_gradient,
    "clip_cov": _clip_cov_gradient,
    "kl_cov": _kl_cov_gradient,
    "expert_iteration": _token_mean_gradient(lambda batch, b, t, **p: -1.0 if batch.adv[b][t] > 0 else 0.0),
    "glm5_is": _token_mean_gradient(lambda batch, b, t, **p: _weighted(batch, b, t, "glm5_is", **p)),
    "prime_dppo": _token_mean_gradient(_prime_gradient("prime_dppo")),
    "ipo": _token_mean_gradient(_prime_gradient("ipo")),
    "dro": _token_mean_gradient(lambda batch, b, t, dro_beta=0.05, **p:
                                -batch.adv[b][t] + dro_beta * (batch.lp[b][t] - batch.old[b][t])),
    "topr": _token_mean_gradient(lambda batch, b, t, **p: _weighted(batch, b, t, "topr", **p)),
    "a3po": _token_mean_gradient(_a3po_gradient),
}


def loss_gradient(loss_type: str, lp, old, adv, mask, roll=None, eps_low=0.2, eps_high=0.2,
                  **params) -> List[List[float]]:
    """d(aggregated loss)/d log pi_theta of ``loss_type`` without a correction (no dual-clip)."""
    return GRADIENTS[loss_type](LossBatch(lp, old, adv, mask, roll, eps_low, eps_high), **params)


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
    """The stated gradient weight w_t: d loss_t / d log pi_theta(y_t) = -A_t w_t (README, policy losses)."""
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
            elif loss_type == "glm5_is":
                lo, hi = params.get("glm5_is_clip_range", (0.8, 1.2))
                r_mu = _exp(lp[b][t] - (roll or old)[b][t])
                w = r_mu if lo < r_mu < hi else 0.0
            elif loss_type == "topr":
                w = 1.0 if a >= 0 else min(r, 1.0)
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
