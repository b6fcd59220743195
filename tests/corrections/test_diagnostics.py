"""The mismatch diagnostics against float64 loop references, and their per-step exactness units."""

import math

import pytest
import torch
from helpers import random_inputs

from openrlhf_offpolicy.models import PolicyLoss


def reference(inputs):
    old, roll, mask = (inputs[k].tolist() for k in ("old_log_probs", "rollout_log_probs", "action_mask"))
    tokens = [[(o, r) for o, r, m in zip(oo, rr, mm) if m > 0] for oo, rr, mm in zip(old, roll, mask)]
    flat = [tr for row in tokens for tr in row]
    n = len(flat)
    out = {
        "chi2_token": sum(math.exp(2 * (o - r)) - 1 for o, r in flat) / n,
        "prob_abs_diff": sum(abs(math.exp(o) - math.exp(r)) for o, r in flat) / n,
        "chi2_seq": [math.exp(2 * max(-20, min(20, sum(o - r for o, r in row)))) - 1 for row in tokens],
        "ppl_ratio": [math.exp(sum(r for _, r in row) / len(row)) / math.exp(sum(o for o, _ in row) / len(row))
                      for row in tokens],
    }
    def js(o, r):
        p, q = math.exp(o), math.exp(r)
        m = (p + q) / 2
        kl = lambda a, c: sum(x * math.log(x / y) for x, y in ((a, c), (1 - a, 1 - c)) if x > 0)  # noqa: E731
        return (kl(p, m) + kl(q, m)) / 2

    out["js"] = sum(js(o, r) for o, r in flat) / n
    out["prob_diff_gt_ln2_frac"] = sum(abs(o - r) > math.log(2) for o, r in flat) / n
    k3 = lambda o, r: math.exp(o - r) - 1 - (o - r)  # noqa: E731
    # turns: maximal runs of action tokens; a row's first, second, then every later turn
    per_turn = {1: [], 2: [], 3: []}
    for oo, rr, mm in zip(old, roll, mask):
        turn, previous = 0, 0
        for o, r, m in zip(oo, rr, mm):
            if m > 0:
                turn += previous == 0
                per_turn[min(turn, 3)].append(k3(o, r))
            previous = m
    for t, name in ((1, "k3_turn1"), (2, "k3_turn2"), (3, "k3_turn3+")):
        out[name] = sum(per_turn[t]) / max(len(per_turn[t]), 1)
    return out


def length_bucket_reference(tokens, edges=(512, 2048, 8192)):
    out = {}
    names = [f"k3_len<={e}" for e in edges] + [f"k3_len>{edges[-1]}"]
    bounds = [0, *edges, float("inf")]
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
        rows = [row for row in tokens if lo < len(row) <= hi]
        values = [math.exp(o - r) - 1 - (o - r) for row in rows for o, r in row]
        out[name] = sum(values) / max(len(values), 1)
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diagnostics_match_their_definitions(seed, dtype):
    inputs = random_inputs(batch=9, length=16, seed=seed, mismatch_scale=(0.01, 0.5), dtype=dtype)
    module = PolicyLoss(enable_vllm_is_correction=True, vllm_is_correction_type="tis")
    module(**inputs)
    m, ref = module.metrics, reference(inputs)
    for name in ("chi2_token", "prob_abs_diff", "js", "prob_diff_gt_ln2_frac", "k3_turn1", "k3_turn2", "k3_turn3+"):
        assert m[f"mismatch/{name}"].dim() == 0
        assert m[f"mismatch/{name}"].item() == pytest.approx(ref[name], rel=2e-5, abs=1e-7), name
    for name in ("chi2_seq", "ppl_ratio"):  # sequence means (every row of these inputs has tokens)
        assert m[f"mismatch/{name}"].dim() == 0
        expected = sum(ref[name]) / len(ref[name])
        assert m[f"mismatch/{name}"].item() == pytest.approx(expected, rel=2e-5, abs=1e-7), name
    assert 0 < m["mismatch/prob_diff_gt_ln2_frac"].item() < 1


@pytest.mark.parametrize("seed", [0, 1])
def test_turn_and_length_buckets_match_their_definitions_on_multi_turn_rows(seed):
    inputs = random_inputs(batch=6, length=24, seed=seed, mismatch_scale=(0.01, 0.5))
    g = torch.Generator().manual_seed(seed)
    holes = torch.rand(6, 24, generator=g) < 0.25
    holes[:, 0] = False
    inputs["action_mask"] = inputs["action_mask"] * ~holes
    module = PolicyLoss()
    module(**inputs)
    ref = reference(inputs)
    for name in ("k3_turn1", "k3_turn2", "k3_turn3+"):
        assert module.metrics[f"mismatch/{name}"].item() == pytest.approx(ref[name], rel=1e-6, abs=1e-9), name
    assert ref["k3_turn2"] > 0 and ref["k3_turn3+"] > 0, "these rows must have several turns"


def test_length_buckets_use_fixed_edges_of_the_generation_budget():
    lengths = [3, 512, 513, 2048, 2049, 9000]
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(6, 9000, generator=g, dtype=torch.float64) - 0.1
    roll = old + 0.2 * torch.randn(6, 9000, generator=g, dtype=torch.float64)
    mask = (torch.arange(9000).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).double()
    module = PolicyLoss()
    module(old.clone().requires_grad_(), old, torch.ones(6, 9000, dtype=torch.float64), action_mask=mask,
           rollout_log_probs=roll)
    tokens = [[(o, r) for o, r in zip(old[b, :n].tolist(), roll[b, :n].tolist())] for b, n in enumerate(lengths)]
    for name, value in length_bucket_reference(tokens).items():
        assert module.metrics[f"mismatch/{name}"].item() == pytest.approx(value, rel=1e-6), name


def test_the_diagnostics_are_computed_without_a_correction_too():
    module = PolicyLoss()
    module(**random_inputs(seed=3))
    assert {"mismatch/chi2_token", "mismatch/chi2_seq", "mismatch/ppl_ratio", "mismatch/prob_abs_diff",
            "mismatch/js", "mismatch/prob_diff_gt_ln2_frac", "mismatch/k3_len<=512", "mismatch/k3_len>8192",
            "mismatch/k3_turn1", "mismatch/k3_turn3+"} <= set(module.metrics)


def test_a_token_mean_is_exact_over_micro_batches_under_upstreams_token_weighting():
    """chi2_token of the whole batch = the token-weighted mean of the micro-batches' values."""
    inputs = random_inputs(batch=8, length=12, seed=4)
    whole = PolicyLoss()
    whole(**inputs)
    total, tokens, seq_total, seqs = 0.0, 0.0, 0.0, 0
    for idx in (slice(0, 3), slice(3, 8)):
        part = PolicyLoss()
        part(**{k: v[idx] for k, v in inputs.items()})
        n = inputs["action_mask"][idx].sum().item()
        total += part.metrics["mismatch/chi2_token"].item() * n
        tokens += n
        stat = part.statistics["mismatch/ppl_ratio"]
        seq_total, seqs = seq_total + stat.total.item(), seqs + stat.count.item()
    assert total / tokens == pytest.approx(whole.metrics["mismatch/chi2_token"].item(), rel=1e-6)
    assert seq_total / seqs == pytest.approx(whole.metrics["mismatch/ppl_ratio"].item(), rel=1e-6)


def test_the_lazy_metrics_keep_no_autograd_graph_alive_and_equal_eager_values():
    import gc
    import weakref

    inputs = random_inputs(batch=4, length=8, seed=5)
    leaf = inputs["log_probs"].detach().clone().requires_grad_()
    module = PolicyLoss(policy_loss_type="sapo", enable_vllm_is_correction=True, vllm_is_correction_type="tis",
                        rejection=["seq_max_k2:0.02"])
    factor = torch.ones_like(leaf, requires_grad=True)
    log_probs = leaf * factor  # a non-leaf, like the actor's output; its graph saves `factor`
    saved = weakref.ref(factor)
    del factor
    out = module(**{**inputs, "log_probs": log_probs})
    del out, log_probs
    gc.collect()
    assert saved() is None, "the pending metrics must not hold the autograd graph"
    first = module.metrics
    assert module.metrics is first and {"sapo/gate_mean", "rejection/masked_frac", "is/ess"} <= set(first)
