"""The segmentation section of `make demo`, shrunk to tiny data and one short epoch per run."""

from __future__ import annotations

from pathlib import Path

from visiondistill.demo import main


# Four CLI runs in subprocesses: 30-50 s on two (shared) CPU cores.
def test_quick_segmentation_demo_writes_the_report(tmp_path: Path):
    out = tmp_path / "demo"
    args = ["--task", "segmentation", "--quick", "--runs", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data")]
    assert main([*args, "--out", str(out)]) == 0
    report = (out / "segmentation" / "report.md").read_text()
    for expected in ("teacher (Unet resnet18)", "student, scratch", "student, distilled", "mIoU (test)", "nodule"):
        assert expected in report
    assert (tmp_path / "runs" / "segmentation" / "lesions" / "checkpoints" / "best.ckpt").is_file()
    # One run report for the shapes runs; the lesion run (other data, no teacher) is left out of it.
    run_report = (out / "segmentation" / "run_report" / "report.md").read_text()
    assert "| student_distilled | distilled |" in run_report and "lesions" not in run_report
    assert not list((out / "segmentation").glob("run_report_*"))
