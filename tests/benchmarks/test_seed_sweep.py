"""benchmarks/seed_sweep.py: the paired (same-seed) comparison of each run with the baseline."""

from __future__ import annotations

import pytest

from ..support.benchmarks import load_benchmark


@pytest.fixture(scope="module")
def sweep():
    return load_benchmark("seed_sweep")


def result(val: float, test: float) -> dict:
    return {"val": val, "test": {"test/miou": test}}


RESULTS = {
    # Seeds in another order than the baseline's, one seed the baseline lacks: pairing is by seed, not by position.
    "distilled": {2: result(0.60, 0.58), 0: result(0.50, 0.55), 7: result(0.9, 0.9)},
    "scratch": {2: result(0.65, 0.61), 1: result(0.30, 0.30), 0: result(0.40, 0.45)},
}


def test_pairs_by_seed_and_skips_unshared_seeds(sweep):
    paired = sweep.paired_gains(RESULTS, "scratch", "test/miou")
    assert list(paired) == ["distilled"]
    assert [(seed, base, ours) for seed, base, ours, _ in paired["distilled"]] == [(0, 0.45, 0.55), (2, 0.61, 0.58)]
    assert [round(gain, 6) for *_, gain in paired["distilled"]] == [0.1, -0.03]
    val = sweep.paired_gains(RESULTS, "scratch", "val")["distilled"]
    assert [round(gain, 6) for *_, gain in val] == [0.1, -0.05]


def test_table_reports_mean_gain_and_wins(sweep):
    table = sweep.paired_table(sweep.paired_gains(RESULTS, "scratch", "test/miou"), "scratch", "test/miou")
    assert "| distilled | 0 | 45.0 | 55.0 | +10.0 |" in table
    assert "| distilled | 2 | 61.0 | 58.0 | -3.0 |" in table
    # Mean gain +3.5, sample std of (+10, −3) = 9.2; one seed of two lost.
    assert "| +3.5 ± 9.2 (wins 1/2) |" in table


def test_unknown_baseline_is_named(sweep):
    with pytest.raises(KeyError, match="baseline 'teacher'.*scratch"):
        sweep.paired_gains(RESULTS, "teacher", "val")
