"""The staleness bookkeeping (pure): metrics, drops, group merging."""

import statistics

import pytest

from openrlhf_offpolicy.integration.runtime.policy_versions import group_versions
from openrlhf_offpolicy.integration.runtime.staleness import SampleVersion, filter_step, keep_mask, staleness_stats


def _reference(trainer_version, lows, highs, max_staleness):
    """Written differently: per-sample dicts, statistics module."""
    rows = [{"lag": trainer_version - lo, "partial": hi != lo} for lo, hi in zip(lows, highs)]
    kept = [r for r in rows if max_staleness is None or r["lag"] <= max_staleness]
    return {
        "staleness/mean": statistics.fmean([r["lag"] for r in kept]) if kept else 0.0,
        "staleness/max": max([r["lag"] for r in kept], default=0),
        "staleness/partial_frac": statistics.fmean([float(r["partial"]) for r in kept]) if kept else 0.0,
        "staleness/dropped_frac": 1 - len(kept) / len(rows),
    }


@pytest.mark.parametrize("max_staleness", [None, 0, 1, 3, 10])
def test_step_metrics_and_drops_equal_a_per_sample_reference(max_staleness):
    lows = [7, 7, 5, 5, 4, 4, 6, 6, 3, 7]
    highs = [7, 8, 5, 6, 4, 4, 7, 6, 3, 7]
    versions = [SampleVersion(lo, hi) for lo, hi in zip(lows, highs)]
    samples = list(range(len(lows)))
    kept, stats = filter_step(7, samples, versions, max_staleness)
    expected = _reference(7, lows, highs, max_staleness)
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, abs=1e-12), key
    assert kept == [s for s, lo in zip(samples, lows) if max_staleness is None or 7 - lo <= max_staleness]
    assert stats["staleness/trainer_version"] == 7.0


def test_everything_dropped_gives_zero_kept_metrics_and_full_drop_fraction():
    stats = staleness_stats(5, [SampleVersion(1, 1)] * 4, [False] * 4)
    assert stats["staleness/dropped_frac"] == 1.0 and stats["staleness/max"] == 0.0


def test_sync_mode_is_zero_staleness():
    assert keep_mask(3, [SampleVersion(3, 3)] * 2, 0) == [True, True]
    assert staleness_stats(3, [SampleVersion(3, 3)] * 2, [True, True])["staleness/mean"] == 0.0


def test_a_sample_newer_than_the_trainer_is_refused():
    with pytest.raises(ValueError, match="newer than the trainer"):
        staleness_stats(2, [SampleVersion(3, 3)], [True])
    with pytest.raises(ValueError, match="low <= high"):
        SampleVersion(3, 2)


def test_a_prompt_group_is_kept_or_dropped_whole_on_its_oldest_sample():
    versions = [SampleVersion(4, 4), SampleVersion(3, 5), SampleVersion(5, 5), SampleVersion(5, 5)]
    merged = group_versions(versions, 2)
    assert merged == [SampleVersion(3, 5)] * 2 + [SampleVersion(5, 5)] * 2
    assert keep_mask(5, merged, 1) == [False, False, True, True]
    with pytest.raises(ValueError, match="groups of 3"):
        group_versions(versions, 3)


def test_lockstep_keep_cuts_to_a_multiple_of_the_unit_keeping_the_freshest_whole_groups():
    from openrlhf_offpolicy.integration.runtime.staleness import lockstep_keep

    kept = [True] * 6 + [False] * 2 + [True] * 2      # groups of 2: g0 g1 g2 kept, g3 dropped, g4 kept
    lags = [2, 2, 0, 0, 1, 1, 5, 5, 0, 0]
    assert lockstep_keep(kept, lags, unit=4, group=2) == kept  # 8 kept samples: already a multiple
    assert lockstep_keep(kept, lags, unit=6, group=2) == [False] * 2 + [True] * 4 + [False] * 2 + [True] * 2
    assert lockstep_keep([True] * 6, [0] * 6, unit=4, group=2) == [True] * 4 + [False] * 2  # ties: earlier first
    assert lockstep_keep(kept, lags, unit=10, group=2) == [False] * 10
    with pytest.raises(ValueError, match="kept or dropped together"):
        lockstep_keep([True, False], [0, 0], unit=2, group=2)
