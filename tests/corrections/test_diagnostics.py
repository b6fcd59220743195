"""The mismatch diagnostics against float64 loop references, and their per-step exactness units."""

import math

import pytest
import torch
from helpers import random_inputs

from openrlhf_offpolicy.corrections.diagnostics import length_quartiles
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
    # quartiles of the response length: sort by (length, position), split the ranks in four
    order = sorted(range(len(tokens)), key=lambda b: (len(tokens[b]), b))
    for q in range(4):
        members = [b for rank, b in enumerate(order) if rank * 4 // len(order) == q]
        k3 = sum(math.exp(o - r) - 1 - (o - r) for b in members for o, r in tokens[b])
        out[f"k3_q{q + 1}"] = k3 / max(sum(len(tokens[b]) for b in members), 1)
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diagnostics_match_their_definitions(seed, dtype):
    inputs = random_inputs(batch=9, length=16, seed=seed, mismatch_scale=(0.01, 0.5), dtype=dtype)
    module = PolicyLoss(enable_vllm_is_correction=True, vllm_is_correction_type="tis")
    module(**inputs)
    m, ref = module.metrics, reference(inputs)
    for name in ("chi2_token", "prob_abs_diff", "k3_q1", "k3_q2", "k3_q3", "k3_q4"):
        assert m[f"mismatch/{name}"].dim() == 0
        assert m[f"mismatch/{name}"].item() == pytest.approx(ref[name], rel=2e-5, abs=1e-7), name
    for name in ("chi2_seq", "ppl_ratio"):  # sequence means (every row of these inputs has tokens)
        assert m[f"mismatch/{name}"].dim() == 0
        expected = sum(ref[name]) / len(ref[name])
        assert m[f"mismatch/{name}"].item() == pytest.approx(expected, rel=2e-5, abs=1e-7), name
    # the longer sequences of this batch are more off-policy per token only by chance: the quartiles differ
    assert len({round(m[f"mismatch/k3_q{q}"].item(), 6) for q in range(1, 5)}) == 4


def test_the_diagnostics_are_computed_without_a_correction_too():
    module = PolicyLoss()
    module(**random_inputs(seed=3))
    assert {"mismatch/chi2_token", "mismatch/chi2_seq", "mismatch/ppl_ratio", "mismatch/prob_abs_diff",
            "mismatch/k3_q1", "mismatch/k3_q4"} <= set(module.metrics)


def test_length_quartiles_rank_sequences_with_tokens_and_skip_empty_ones():
    counts = torch.tensor([5.0, 0.0, 1.0, 3.0, 3.0, 9.0, 2.0, 7.0, 0.0])
    # valid lengths sorted: 1(b2) 2(b6) 3(b3) 3(b4) 5(b0) 7(b7) 9(b5): ranks 0..6 -> floor(4 r / 7)
    assert length_quartiles(counts).tolist() == [2, -1, 0, 1, 1, 3, 0, 2, -1]
    assert length_quartiles(torch.zeros(3)).tolist() == [-1, -1, -1]


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
