"""Segment-level IS (one segment = one turn: a maximal run of action tokens), the segment_*
rejection units and M2PO, against float64 loop references written from the formulas as read in
ROLL 8eb27cc (``roll/utils/train_infer_corrections.py``) and AReaL cbff54d (``_apply_m2po_masking``).
Neither peer's function imports without its framework, so the peer equality is to the formula."""

import math

import pytest
import torch
from helpers import assert_close_lists, correction_output, random_inputs
from reference import correction_coefficients, segments

from openrlhf_offpolicy.corrections import CORRECTIONS
from openrlhf_offpolicy.corrections.batch import make_policy_batch
from openrlhf_offpolicy.corrections.rejection import apply_rejection, parse_criterion, parse_rejection
from openrlhf_offpolicy.corrections.stats import segment_reduce, segment_starts, turn_index
from openrlhf_offpolicy.models import PolicyLoss


def multi_turn_inputs(seed, batch=8, length=16, **kw):
    """Random inputs whose action masks have holes (tool outputs) splitting rows into 1-4 turns."""
    inputs = random_inputs(batch=batch, length=length, seed=seed, **kw)
    g = torch.Generator().manual_seed(100 + seed)
    holes = torch.rand(batch, length, generator=g, dtype=torch.float64) < 0.2
    holes[:, 0] = False
    inputs["action_mask"] = inputs["action_mask"] * ~holes
    return inputs


def test_segments_are_the_maximal_runs_of_action_tokens():
    mask = torch.tensor([[1, 1, 0, 1, 0, 0, 1, 1], [0, 1, 1, 1, 0, 1, 0, 0]], dtype=torch.float64)
    assert segment_starts(mask).tolist() == [[1, 0, 0, 1, 0, 0, 1, 0], [0, 1, 0, 0, 0, 1, 0, 0]]
    turns = turn_index(mask)
    assert turns.tolist() == [[1, 1, 0, 2, 0, 0, 3, 3], [0, 1, 1, 1, 0, 2, 0, 0]]
    x = torch.arange(16, dtype=torch.float64).reshape(2, 8)
    reduce = lambda how: segment_reduce(x, mask, mask, how, turns).tolist()  # noqa: E731
    assert reduce("sum") == [[1, 1, 0, 3, 0, 0, 13, 13], [0, 30, 30, 30, 0, 13, 0, 0]]
    assert reduce("max") == [[1, 1, 0, 3, 0, 0, 7, 7], [0, 11, 11, 11, 0, 13, 0, 0]]
    assert reduce("mean") == [[.5, .5, 0, 3, 0, 0, 6.5, 6.5], [0, 10, 10, 10, 0, 13, 0, 0]]


@pytest.mark.parametrize("how", ["sum", "mean", "max"])
def test_the_single_turn_fast_path_equals_the_general_one(how):
    inputs = random_inputs(batch=6, length=10, seed=4)
    mask, x = inputs["action_mask"], inputs["old_log_probs"]
    turns = turn_index(mask)
    assert turns.max() == 1
    assert torch.allclose(segment_reduce(x, mask, mask, how), segment_reduce(x, mask, mask, how, turns),
                          rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name", ["segment-tis", "segment-mis"])
@pytest.mark.parametrize("band", [(0.0, 1.1), (0.9, 1.1), (0.5, 5.0)])
def test_segment_coefficients_match_float64_loop_reference(name, band, seed):
    inputs = multi_turn_inputs(seed, mismatch_scale=(0.01, 0.4))
    out, _ = correction_output(name, inputs, threshold=band)
    expected = correction_coefficients(name, inputs["old_log_probs"], inputs["rollout_log_probs"],
                                       inputs["action_mask"], *band)
    assert_close_lists(out.coef, expected)


def test_segment_mis_keeps_or_drops_whole_turns_and_turns_are_judged_separately():
    inputs = multi_turn_inputs(5, batch=16, mismatch_scale=(0.01, 0.3))
    out, batch = correction_output("segment-mis", inputs, threshold=(0.95, 1.05))
    partly_kept_rows = 0
    for b in range(16):
        toks = [t for t in range(16) if batch.mask[b, t] > 0]
        for seg in segments(toks):
            kept = {bool(out.coef[b, t] > 0) for t in seg}
            assert len(kept) == 1, f"row {b}: turn {seg} is partly masked"
        kept_row = {bool(out.coef[b, t] > 0) for t in toks}
        partly_kept_rows += len(kept_row) == 2
    assert partly_kept_rows > 0, "some episode must have a kept and a dropped turn"


def test_with_one_turn_per_row_segments_are_sequences():
    inputs = random_inputs(batch=12, length=14, seed=2, mismatch_scale=(0.01, 0.4))
    seg, _ = correction_output("segment-mis", inputs, threshold=(0.9, 1.1))
    seq, _ = correction_output("seq-mask-tis", inputs, threshold=(0.9, 1.1))
    assert torch.equal(seg.rejected, seq.rejected) and seg.rejected.any()
    log_band = f"{math.log(0.9)}:{math.log(1.1)}"
    assert torch.equal(rejected_by([f"segment_mean_k1:{log_band}"], inputs),
                       rejected_by([f"seq_mean_k1:{log_band}"], inputs))


def test_a_non_finite_token_does_not_split_its_turn():
    inputs = random_inputs(batch=2, length=8, seed=1, mismatch_scale=0.3, min_len=8)
    inputs["rollout_log_probs"] = inputs["rollout_log_probs"].clone()
    inputs["rollout_log_probs"][0, 3] = float("nan")
    out, batch = correction_output("segment-tis", inputs, threshold=(0.0, 10.0))
    assert batch.mask[0, 3] == 0 and out.coef[0, 3] == 0
    kept = out.coef[0][batch.mask[0] > 0]
    assert torch.allclose(kept, kept[0].expand_as(kept)), "one turn, one weight"
    log_rho = [inputs["old_log_probs"][0, t] - inputs["rollout_log_probs"][0, t] for t in range(8) if t != 3]
    assert kept[0].item() == pytest.approx(math.exp(sum(float(v) for v in log_rho) / 7))


def test_segment_tis_equals_rolls_weight_with_no_lower_bound_and_never_drops():
    inputs = multi_turn_inputs(7, mismatch_scale=0.5)
    out, batch = correction_output("segment-tis", inputs, threshold=(0.0, 2.0))
    assert not out.rejected.any() and (out.coef[batch.mask > 0] > 0).all()
    assert out.coef.max() <= 2.0


# ----------------------------------------------------------------------------- rejection units
def build_batch(inputs):
    batch, _, _ = make_policy_batch(inputs["log_probs"], inputs["old_log_probs"], inputs["advantages"],
                                    inputs["action_mask"], inputs["rollout_log_probs"])
    return batch


def rejected_by(criteria, inputs):
    batch = build_batch(inputs)
    return apply_rejection(CORRECTIONS.get("none").fn(batch, None), batch, parse_rejection(criteria)).rejected


def reference_segment_keep(criterion, inputs):
    rule, *vals = criterion.split(":")
    vals = [float(v) for v in vals]
    agg, metric = rule.rsplit("_", 1)
    low, high = vals if len(vals) == 2 else ([-vals[0], vals[0]] if metric == "k1" else [0.0, vals[0]])
    old, roll, mask = (inputs[k].tolist() for k in ("old_log_probs", "rollout_log_probs", "action_mask"))
    out = []
    for b in range(len(old)):
        keep = [False] * len(old[b])
        for seg in segments([t for t in range(len(old[b])) if mask[b][t] > 0]):
            lr = [max(-20.0, min(20.0, old[b][t] - roll[b][t])) for t in seg]
            stat = {"k1": lr, "k2": [0.5 * v * v for v in lr], "k3": [math.exp(v) - 1 - v for v in lr]}[metric]
            value = {"segment_sum": sum(stat), "segment_mean": sum(stat) / len(stat), "segment_max": max(stat)}[agg]
            for t in seg:
                keep[t] = low <= value <= high
        out.append(keep)
    return torch.tensor(out)


SEGMENT_CRITERIA = ["segment_sum_k1:-0.4:0.4", "segment_sum_k2:0.1", "segment_sum_k3:0.1", "segment_mean_k1:0.1",
                    "segment_mean_k2:0.02", "segment_mean_k3:0.02", "segment_max_k2:0.05", "segment_max_k3:0.05"]


@pytest.mark.parametrize("criterion", SEGMENT_CRITERIA)
@pytest.mark.parametrize("seed", [0, 1])
def test_each_segment_criterion_keeps_the_tokens_its_loop_reference_keeps(criterion, seed):
    inputs = multi_turn_inputs(seed, mismatch_scale=(0.02, 0.5))
    on = inputs["action_mask"] > 0
    rejected = rejected_by([criterion], inputs)
    assert torch.equal(rejected, on & ~reference_segment_keep(criterion, inputs)), criterion
    assert 0 < int(rejected.sum()) < int(on.sum())


def test_segment_mean_k1_with_the_log_band_is_segment_mis():
    inputs = multi_turn_inputs(3, mismatch_scale=(0.01, 0.4))
    gate, _ = correction_output("segment-mis", inputs, threshold=(0.9, 1.1))
    assert torch.equal(rejected_by([f"segment_mean_k1:{math.log(0.9)}:{math.log(1.1)}"], inputs), gate.rejected)


def test_segment_rejection_rate_is_a_mean_over_turns():
    inputs = multi_turn_inputs(4, mismatch_scale=(0.02, 0.5))
    module = PolicyLoss(rejection=["segment_max_k2:0.05"])
    module(**inputs)
    keep = reference_segment_keep("segment_max_k2:0.05", inputs)
    mask = inputs["action_mask"].tolist()
    turns = [(b, seg[0]) for b in range(len(mask)) for seg in segments([t for t, m in enumerate(mask[b]) if m > 0])]
    expected = sum(not keep[b, t] for b, t in turns) / len(turns)
    assert module.metrics["rejection/segment_max_k2:0.05/masked_frac"].item() == pytest.approx(expected, rel=1e-6)


def test_segment_max_of_k1_is_refused():
    with pytest.raises(ValueError, match="k2 or k3 only"):
        parse_criterion("segment_max_k1:0.1")


# ----------------------------------------------------------------------------- M2PO
def reference_m2po_keep(inputs, tau):
    """Drop the k largest M = (log rho)^2, k the smallest with mean(rest) < tau (n - 1 if none)."""
    old, roll, mask = (inputs[k].tolist() for k in ("old_log_probs", "rollout_log_probs", "action_mask"))
    tokens = [(b, t) for b in range(len(old)) for t in range(len(old[b])) if mask[b][t] > 0]
    m2 = {bt: max(-20.0, min(20.0, old[bt[0]][bt[1]] - roll[bt[0]][bt[1]])) ** 2 for bt in tokens}
    order = sorted(tokens, key=lambda bt: -m2[bt])
    n = len(order)
    k = next((k for k in range(n) if sum(m2[bt] for bt in order[k:]) / (n - k) < tau), n - 1)
    dropped = set(order[:k])
    return torch.tensor([[mask[b][t] > 0 and (b, t) not in dropped for t in range(len(old[b]))]
                         for b in range(len(old))])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("tau", [0.005, 0.02, 0.1])
def test_m2po_drops_the_fewest_largest_second_moments_that_bring_the_mean_below_tau(seed, tau):
    inputs = random_inputs(batch=8, length=12, seed=seed, mismatch_scale=(0.02, 0.5))
    on = inputs["action_mask"] > 0
    rejected = rejected_by([f"m2po:{tau}"], inputs)
    assert torch.equal(rejected, on & ~reference_m2po_keep(inputs, tau))
    kept = ~rejected & on
    lr = (inputs["old_log_probs"] - inputs["rollout_log_probs"])[kept]
    assert (lr * lr).mean() < tau  # not k2: no factor 1/2


def test_m2po_keeps_one_token_when_no_count_qualifies_and_everything_when_the_mean_is_already_low():
    inputs = random_inputs(batch=4, length=6, seed=1, mismatch_scale=3.0)
    inputs["rollout_log_probs"] = inputs["old_log_probs"] - 5.0  # every M = 25
    on = inputs["action_mask"] > 0
    assert int((~rejected_by(["m2po:1.0"], inputs) & on).sum()) == 1
    assert not rejected_by(["m2po:100.0"], inputs).any()


@pytest.mark.parametrize("bad", ["m2po:0", "m2po:-1", "m2po", "m2po:0.1:0.2"])
def test_m2po_needs_one_positive_tau(bad):
    with pytest.raises(ValueError):
        parse_criterion(bad)
