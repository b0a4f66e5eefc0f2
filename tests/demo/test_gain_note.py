"""The demo report's note: this run's distilled − scratch gain next to the paired sweep's mean gain."""

from __future__ import annotations

from pathlib import Path

import pytest

from visiondistill import demo
from visiondistill.demo import DemoTask, SweepGain, gain_note


def test_note_states_single_run_gain_and_sweep_mean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    import visiondistill.reporting.measure as measure
    import visiondistill.reporting.runs as runs

    scores = {"student_scratch": 0.612, "student_kd": 0.655, "teacher": 0.9}
    monkeypatch.setattr(runs, "read_run", lambda folder: Path(folder).name)
    monkeypatch.setattr(runs, "build_datamodule", lambda run: None)
    monkeypatch.setattr(measure, "load_run_module", lambda run: run)
    monkeypatch.setattr(measure, "test_metrics", lambda module, datamodule: {"test/acc": scores[module], "x": 0.0})
    task = DemoTask(
        demo.TASKS["classification"].runs,
        reports=(("", ("teacher", "student_scratch", "student_kd")),),
        gain=SweepGain("test/acc", "benchmarks/sweeps/classification.yaml", "+20.0 ± 3.0 over 5 seeds, wins 5/5"),
    )
    note = gain_note(task, [tmp_path / run.name for run in task.runs])
    assert "student_kd 65.5 − student_scratch 61.2 = +4.3 points" in note
    assert "benchmarks/sweeps/classification.yaml" in note and "+20.0 ± 3.0 over 5 seeds, wins 5/5" in note


@pytest.mark.parametrize("task", [name for name, task in demo.TASKS.items() if task.gain is not None])
def test_each_note_names_a_shipped_sweep_of_the_same_metric(task: str):
    import yaml

    gain = demo.TASKS[task].gain
    sweep = yaml.safe_load((Path(__file__).resolve().parents[2] / gain.sweep).read_text())
    assert gain.metric == f"test/{sweep['metric']}"
    assert sweep["baseline"] == "scratch" and len(sweep["seeds"]) == 5
