"""`make demo`'s pipeline, shrunk to seconds: three CLI runs, evaluation, agreement and the report."""

from __future__ import annotations

from pathlib import Path

from visiondistill.demo import main


def test_quick_demo_writes_the_report(tmp_path: Path):
    out = tmp_path / "demo"
    args = [
        "--task",
        "classification",
        "--quick",
        "--runs",
        str(tmp_path / "runs"),
        "--data-dir",
        str(tmp_path / "data"),
    ]
    assert main([*args, "--out", str(out)]) == 0
    report = (out / "classification" / "report.md").read_text()
    for expected in ("teacher (resnet18)", "student, scratch", "student, distilled", "top-1 (test)", "pearson", "kld"):
        assert expected in report
    kd_run = tmp_path / "runs" / "classification" / "student_kd"
    assert list((kd_run / "saliency").glob("epoch_*/maps.npz")), "the distilled run logs saliency maps"
    assert list((kd_run / "attention").glob("epoch_*/maps.npz"))
