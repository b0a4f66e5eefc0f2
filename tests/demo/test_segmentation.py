"""The segmentation section of `make demo`, shrunk to tiny data and one short epoch per run."""

from __future__ import annotations

from pathlib import Path

import pytest

from visiondistill.demo import main


# Four CLI runs in subprocesses: 30-50 s on two (shared) CPU cores.
@pytest.mark.slow  # 153 s on 2 loaded cores; make test-all runs it
def test_quick_segmentation_demo_writes_the_report(tmp_path: Path):
    out = tmp_path / "demo"
    args = ["--task", "segmentation", "--quick", "--runs", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data")]
    assert main([*args, "--out", str(out)]) == 0
    report = (out / "segmentation" / "report.md").read_text()
    for expected in ("| teacher | teacher |", "| student_distilled | distilled |", "test/miou", "Per-class `test/iou`"):
        assert expected in report
    # The segmentation section: each student's masks against the teacher's, class by class.
    section = report.split("## Segmentation: the students' masks against the teacher's", 1)[1]
    assert "| student | pixels agreeing | background |" in section and "| student_scratch |" in section
    assert "lesions" not in report
    # The lesion run (other data, no teacher) gets its own report: per-class IoU on the lesion classes.
    lesions = (out / "segmentation" / "lesions" / "report.md").read_text()
    assert "| lesions | scratch |" in lesions and "Per-class `test/iou`" in lesions and "nodule" in lesions
    assert "students' masks against the teacher's" not in lesions
