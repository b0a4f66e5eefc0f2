"""The keypoint section of `make demo`, shrunk to tiny data and one short epoch per run."""

from __future__ import annotations

from pathlib import Path

import pytest

from visiondistill.demo import TASKS, main


# Three CLI runs in subprocesses: about half a minute on two (shared) CPU cores.
@pytest.mark.slow  # 98 s on 2 loaded cores; make test-all runs it
def test_quick_keypoint_demo_writes_the_report(tmp_path: Path):
    assert "keypoints" in TASKS
    out = tmp_path / "demo"
    args = ["--task", "keypoints", "--quick", "--runs", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data")]
    assert main([*args, "--out", str(out), "--skip-existing"]) == 0
    report = (out / "keypoints" / "report.md").read_text()
    for expected in ("| teacher | teacher |", "| student_distilled | distilled |", "test/pck@0.05", "test/ap"):
        assert expected in report
    # The keypoint section: decoding settings and a picture of every run's keypoints.
    section = report.split("## Keypoints: decoding and predictions", 1)[1]
    assert "decoding, flip test" in section and "OKS AP" in section and "![" in section
    assert (out / "keypoints" / "keypoints.png").stat().st_size > 1000
    # The note next to the paired sweep: this run's own distilled − scratch gain, from the two checkpoints.
    assert "Distillation gain of this run (test/pck@0.05, one seed): student_distilled" in report
    assert "benchmarks/sweeps/keypoints.yaml" in report
    assert (tmp_path / "runs" / "keypoints" / "student_distilled" / "checkpoints" / "best.ckpt").is_file()
