"""Step statistics (``corrections/metrics.py``) against float64 numpy references over the whole step.

A step is split into micro-batches on several DP ranks. Each statistic is reduced the way upstream's
``ppo_train`` (OpenRLHF 0.11.2) reduces its status: per micro-batch, across ranks by sample-weighted
sum, then over micro-steps by sample-weighted mean (``upstream_status_mean`` re-states that loop).
The metric after ``finalize`` must equal the metric computed once on the concatenated data.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from openrlhf_offpolicy.corrections.metrics import (
    EffectiveSampleSize,
    Max,
    Mean,
    StepMetrics,
    as_statistic,
    effective_sample_size,
    hidden_key,
    maximum,
    reductions,
    sequence_mean,
    token_mean,
)


# --------------------------------------------------------------------------- references (numpy, float64)
def ref_token_mean(xs, masks):
    x, m = np.concatenate([a.ravel() for a in xs]), np.concatenate([a.ravel() for a in masks]).astype(bool)
    return float(x[m].mean()) if m.any() else 0.0


def ref_max(xs, masks):
    x, m = np.concatenate([a.ravel() for a in xs]), np.concatenate([a.ravel() for a in masks]).astype(bool)
    return float(x[m].max()) if m.any() else 0.0


def ref_ess(ws, masks):
    w, m = np.concatenate([a.ravel() for a in ws]), np.concatenate([a.ravel() for a in masks]).astype(bool)
    kept = w[m]
    if kept.size == 0 or not (kept ** 2).sum() > 0:
        return 0.0
    return float(kept.sum() ** 2 / (kept.size * (kept ** 2).sum()))


def ref_sequence_mean(values, valids):
    v, ok = np.concatenate(values), np.concatenate(valids).astype(bool)
    return float(v[ok].mean()) if ok.any() else 0.0


# --------------------------------------------------------------------------- upstream's reduction, re-stated
def upstream_status_mean(per_rank_statuses):
    """``per_rank_statuses[r][s]`` is rank r's status of micro-step s (``metrics``, ``weights``,
    ``num_samples``). Every key here is sample-weighted, as ``StepMetrics.add`` declares it."""
    steps = []
    for s in range(len(per_rank_statuses[0])):
        at_step = [ranks[s] for ranks in per_rank_statuses]
        n = sum(st_["num_samples"] for st_ in at_step)
        keys = at_step[0]["metrics"].keys()
        merged = {k: sum(float(st_["metrics"][k].float().mean()) * st_["num_samples"] for st_ in at_step) / n
                  for k in keys}
        steps.append((merged, n))
    total = sum(n for _, n in steps)
    return {k: sum(m[k] * n for m, n in steps) / total for k in steps[0][0]}


def run_step(batches, make_statistics):
    """``batches[r][s]`` are the tensors of rank r's micro-step s; returns the finalized metrics."""
    accumulators, statuses = [], []
    for rank in batches:
        acc, mine = StepMetrics(), []
        for batch in rank:
            status = {"metrics": {}, "weights": {}, "num_samples": batch["B"]}
            acc.add(make_statistics(batch), status, num_samples=batch["B"])
            mine.append(status)
        accumulators.append(acc)
        statuses.append(mine)
    reduced = upstream_status_mean(statuses)
    maxima = {}
    for acc in accumulators:  # the all-reduce(max) across ranks
        for key, value in acc.local_maxima().items():
            maxima[key] = max(maxima.get(key, -math.inf), value)
    return accumulators[0].finalize(reduced, maxima)


def make_batches(seed, ranks, steps):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(ranks):
        rank = []
        for _ in range(steps):
            B, T = int(rng.integers(1, 5)), int(rng.integers(1, 7))
            rank.append({"B": B,
                         "x": rng.normal(size=(B, T)) * 3,
                         "w": rng.exponential(size=(B, T)),
                         "mask": (rng.random((B, T)) < 0.7).astype(np.float64),
                         "seq": rng.normal(size=B),
                         "valid": rng.random(B) < 0.6})
        out.append(rank)
    return out


def step_statistics(batch):
    t = {k: torch.as_tensor(v) for k, v in batch.items() if k != "B"}
    return {"tok": token_mean(t["x"].float(), t["mask"]),
            "max": maximum(t["x"].float(), t["mask"]),
            "ess": effective_sample_size(t["w"].float(), t["mask"]),
            "seq": sequence_mean(t["seq"].float(), t["valid"])}


def flat(batches, key):
    return [b[key] for rank in batches for b in rank]


# --------------------------------------------------------------------------- the whole step
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31), ranks=st.integers(1, 3), steps=st.integers(1, 4))
def test_finalized_metrics_equal_the_metric_of_the_whole_step_for_any_split(seed, ranks, steps):
    batches = make_batches(seed, ranks, steps)
    got = run_step(batches, step_statistics)
    x, m, w = flat(batches, "x"), flat(batches, "mask"), flat(batches, "w")
    want = {"tok": ref_token_mean(x, m), "max": ref_max([a.astype(np.float32) for a in x], m),
            "ess": ref_ess(w, m), "seq": ref_sequence_mean(flat(batches, "seq"), flat(batches, "valid"))}
    for name, value in want.items():
        # Sum fields travel as float32 through upstream's status (one rounding per micro-batch).
        assert got[name] == pytest.approx(value, rel=2e-5, abs=2e-5), name


def test_averaging_micro_batch_values_would_be_wrong_where_the_step_statistic_is_exact():
    """The reason the statistics exist: two micro-batches of 1 and 9 tokens, averaged naively."""
    xs = [np.array([[10.0]]), np.full((1, 9), 0.0)]
    masks = [np.ones((1, 1)), np.ones((1, 9))]
    batches = [[{"B": 1, "x": x, "w": np.ones_like(x), "mask": m, "seq": np.zeros(1), "valid": np.ones(1, bool)}
                for x, m in zip(xs, masks)]]
    got = run_step(batches, step_statistics)
    assert got["tok"] == pytest.approx(1.0)          # 10 / 10 tokens
    naive = np.mean([x.mean() for x in xs])
    assert naive == pytest.approx(5.0)               # what a per-micro-batch mean would log


def test_finalize_removes_the_hidden_fields_and_keeps_upstreams_own_entries():
    acc = StepMetrics()
    status = {"metrics": {}, "weights": {}}
    acc.add({"k": token_mean(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]))}, status, num_samples=2)
    upstream = {"policy_loss": 0.5, **{k: float(v) for k, v in status["metrics"].items()}}
    out = acc.finalize(upstream)
    assert out == {"policy_loss": 0.5, "k": pytest.approx(2.0)}
    assert set(status["weights"].values()) == {"sample"}
    assert all(key.startswith("_offpolicy_stat:k:") for key in status["metrics"])


def test_finalize_of_an_empty_status_is_empty():
    acc = StepMetrics()
    acc.add({"k": token_mean(torch.ones(2), torch.ones(2))}, {"metrics": {}, "weights": {}}, num_samples=1)
    assert acc.finalize({}) == {}


def test_a_metric_that_changes_kind_within_a_step_is_refused():
    acc = StepMetrics()
    acc.add({"k": token_mean(torch.ones(2), torch.ones(2))}, {"metrics": {}, "weights": {}}, num_samples=1)
    with pytest.raises(TypeError, match="changed kind"):
        acc.add({"k": maximum(torch.ones(2), torch.ones(2))}, {"metrics": {}, "weights": {}}, num_samples=1)


def test_reset_forgets_the_previous_steps_maxima():
    acc = StepMetrics()
    acc.add({"m": maximum(torch.tensor([7.0]), torch.tensor([1.0]))}, {"metrics": {}, "weights": {}}, 1)
    acc.reset()
    acc.add({"m": maximum(torch.tensor([2.0]), torch.tensor([1.0]))}, {"metrics": {}, "weights": {}}, 1)
    assert acc.local_maxima() == {hidden_key("m", "value_max"): 2.0}


# --------------------------------------------------------------------------- single statistics
def test_empty_selections_report_zero_not_nan():
    nothing = torch.zeros(3)
    assert token_mean(torch.randn(3), nothing).item() == 0.0
    assert maximum(torch.randn(3), nothing).item() == 0.0
    assert maximum(torch.empty(0), torch.empty(0)).item() == 0.0
    assert effective_sample_size(torch.zeros(3), torch.ones(3)).item() == 0.0
    assert effective_sample_size(torch.randn(3), nothing).item() == 0.0


def test_ess_is_one_for_equal_weights_and_one_over_n_for_a_single_nonzero_weight():
    assert effective_sample_size(torch.full((5,), 0.3), torch.ones(5)).item() == pytest.approx(1.0)
    w = torch.tensor([0.0, 0.0, 4.0, 0.0])
    assert effective_sample_size(w, torch.ones(4)).item() == pytest.approx(0.25)


def test_combine_equals_the_statistic_of_the_concatenated_data():
    rng = np.random.default_rng(0)
    parts = [(rng.normal(size=n), (rng.random(n) < 0.5).astype(np.float64)) for n in (3, 1, 6)]
    for build, ref in ((token_mean, ref_token_mean), (maximum, ref_max), (effective_sample_size, ref_ess)):
        stats = [build(torch.tensor(x), torch.tensor(m)) for x, m in parts]
        combined = type(stats[0]).combine(stats)
        assert combined.item() == pytest.approx(ref([x for x, _ in parts], [m for _, m in parts]), rel=1e-12)


def test_integer_and_boolean_inputs_are_read_as_floats():
    assert token_mean(torch.tensor([1, 2, 4]), torch.tensor([True, False, True])).item() == pytest.approx(2.5)
    assert maximum(torch.tensor([1, 9, 4]), torch.tensor([1, 0, 1])).item() == 4.0


def test_plain_tensors_are_read_as_upstream_reads_them():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    as_token_mean = as_statistic(torch.tensor(0.5), mask)
    assert isinstance(as_token_mean, Mean) and float(as_token_mean.count) == 3.0 and as_token_mean.item() == 0.5
    per_sequence = as_statistic(torch.tensor([1.0, 2.0, 6.0]), mask)
    assert per_sequence.item() == pytest.approx(3.0) and float(per_sequence.count) == 3.0
    typed = maximum(torch.ones(2), torch.ones(2))
    assert as_statistic(typed, mask) is typed
    with pytest.raises(ValueError, match="0-d or a 1-d"):
        as_statistic(torch.ones(2, 2), mask)


def test_parts_round_trip_and_every_kind_documents_its_reduction():
    for stat in (Mean(torch.tensor(3.0), torch.tensor(2.0)), Max(torch.tensor(1.5)),
                 EffectiveSampleSize(torch.tensor(2.0), torch.tensor(3.0), torch.tensor(4.0))):
        again = type(stat).from_parts(stat.parts())
        assert again.item() == stat.item()
        assert all(p.dtype == torch.float64 for p in again.parts().values())
    assert set(reductions()) == {"Mean", "Max", "EffectiveSampleSize"} and all(reductions().values())


def test_statistics_do_not_carry_the_graph():
    x = torch.randn(4, requires_grad=True)
    for stat in (token_mean(x, torch.ones(4)), maximum(x, torch.ones(4)), effective_sample_size(x, torch.ones(4))):
        assert not any(p.requires_grad for p in stat.parts().values())
