"""The keypoint section of `make demo`, shrunk to tiny data and one short epoch per run."""

from __future__ import annotations

from pathlib import Path

from visiondistill.demo import TASKS, main


# Three CLI runs in subprocesses: about half a minute on two (shared) CPU cores.
def test_quick_keypoint_demo_writes_the_report(tmp_path: Path):
    assert "keypoints" in TASKS
    out = tmp_path / "demo"
    args = ["--task", "keypoints", "--quick", "--runs", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data")]
    assert main([*args, "--out", str(out), "--skip-existing"]) == 0
    report = (out / "keypoints" / "report.md").read_text()
    for expected in ("teacher (resnet18", "student, scratch", "student, distilled FPD", "PCK@0.05 (test)", "OKS AP"):
        assert expected in report
    assert (out / "keypoints" / "keypoints.png").stat().st_size > 1000
    assert (tmp_path / "runs" / "keypoints" / "student_distilled" / "checkpoints" / "best.ckpt").is_file()
