"""`make demo`'s pipeline, shrunk to seconds: three CLI runs, evaluation, agreement and the reports."""

from __future__ import annotations

from pathlib import Path


def test_quick_demo_writes_the_reports(quick_classification_demo: Path):
    root = quick_classification_demo
    report = (root / "demo" / "classification" / "report.md").read_text()
    for expected in ("teacher (resnet18)", "student, scratch", "student, distilled", "top-1 (test)", "pearson", "kld"):
        assert expected in report
    run_report = (root / "demo" / "classification" / "run_report" / "report.md").read_text()
    for expected in ("| teacher | teacher |", "| student_scratch | scratch |", "| student_kd | distilled |"):
        assert expected in run_report
    assert (root / "demo" / "classification" / "run_report" / "report.html").is_file()
    kd_run = root / "runs" / "classification" / "student_kd"
    assert list((kd_run / "saliency").glob("epoch_*/maps.npz")), "the distilled run logs saliency maps"
    assert list((kd_run / "attention").glob("epoch_*/maps.npz"))
    assert (kd_run / "MODEL_CARD.md").is_file()
