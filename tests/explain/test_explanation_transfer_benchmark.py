"""benchmarks/explanation_transfer.py: its aggregation (fast) and its whole pipeline in smoke mode (slow)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from ..support.benchmarks import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("explanation_transfer")


def test_summary_is_mean_and_std_over_seeds_with_an_image_bootstrap(bench):
    per_seed = [
        {"acc": torch.tensor([0.5]), "gradcam/pearson": torch.tensor([0.1, 0.2, 0.3, float("nan")])},
        {"acc": torch.tensor([0.7]), "gradcam/pearson": torch.tensor([0.3, 0.4, 0.5, 0.6])},
    ]
    summary = bench.summarise(per_seed, bootstrap=200)
    assert summary["acc"]["mean"] == pytest.approx(0.6) and summary["acc"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert "low" not in summary["acc"], "one value per seed: no interval over images"
    pearson = summary["gradcam/pearson"]
    assert pearson["seeds"] == pytest.approx([0.2, 0.45])  # the NaN image is left out of seed 0's mean
    assert pearson["mean"] == pytest.approx(0.325) and pearson["std"] == pytest.approx(statistics.stdev([0.2, 0.45]))
    # The interval is over the images' means over seeds (0.2, 0.3, 0.4, 0.6): inside their range, around their mean.
    assert 0.2 <= pearson["low"] < 0.375 < pearson["high"] <= 0.6
    assert bench.format_cell(pearson).startswith("0.325 ± 0.177 [")
    assert bench.format_cell(None) == "–" and bench.format_cell({"mean": float("nan"), "std": 0.0}) == "–"


def test_table_has_a_row_per_model_and_a_column_per_measure(bench):
    entry = {"mean": 0.5, "std": 0.1, "low": 0.4, "high": 0.6}
    rows = {model: {key: entry for key, _ in bench.COLUMNS} for model in (*bench.BASELINES, *bench.STUDENTS)}
    rows["teacher"] = {"acc": entry}  # the teacher does not agree with itself: its agreement cells are dashes
    lines = bench.table(rows).splitlines()
    assert lines[0].count("|") == len(bench.COLUMNS) + 2 and len(lines) == 2 + len(rows)
    assert [line.split(" | ")[0].strip("| ") for line in lines[2:]] == list(rows)
    assert lines[2].count("–") == len(bench.COLUMNS) - 1 and "0.500 ± 0.100 [0.40, 0.60]" in lines[3]


@pytest.mark.slow
def test_smoke_run_measures_every_model_and_column(bench, tmp_path):
    # 20–45 s on the loaded 2-core CPU: two tiny teachers, 4 students × 2 fractions × 2 steps, 4 images.
    torch.set_num_threads(1)
    settings = bench.smoke_settings(data_dir=str(tmp_path))
    results = bench.run_benchmark(settings, log=lambda text: None)
    fractions = results["datasets"]["digits"]["fractions"]
    assert set(fractions) == {"0.5", "1"}
    for fraction in fractions.values():
        rows = fraction["rows"]
        assert list(rows) == [*bench.BASELINES[:2], *bench.STUDENTS, bench.BASELINES[2]]
        for model, summary in rows.items():
            for key, _ in bench.COLUMNS:
                if model == "teacher" and key.endswith("pearson"):
                    assert key not in summary
                    continue
                assert math.isfinite(summary[key]["mean"]), (model, key)
                if key != "acc":
                    assert summary[key]["low"] <= summary[key]["mean"] <= summary[key]["high"], (model, key)
        table = bench.table(rows)
        assert table.count("\n") == 1 + len(rows) and "nan" not in table
