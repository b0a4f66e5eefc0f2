"""`make demo`'s pipeline, shrunk to seconds: three CLI runs, then `visiondistill report` over them."""

from __future__ import annotations

from pathlib import Path


def test_quick_demo_writes_the_report(quick_classification_demo: Path):
    root = quick_classification_demo
    out = root / "demo" / "classification"
    report = (out / "report.md").read_text()
    for expected in ("| teacher | teacher |", "| student_scratch | scratch |", "| student_kd | distilled |"):
        assert expected in report
    for expected in ("test/acc_top1", "test/acc_top5", "pearson", "kld", "at_cosine", "Per-class `test/acc_class`"):
        assert expected in report
    assert "Test split: 16 samples." in report and " s | " in report  # the split's size, each run's train time
    assert (out / "report.html").is_file() and (out / "MODEL_CARD_student_kd.md").is_file()
    assert not list(out.glob("run_report*")), "one report: the one `visiondistill report` writes"
    kd_run = root / "runs" / "classification" / "student_kd"
    assert list((kd_run / "saliency").glob("epoch_*/maps.npz")), "the distilled run logs saliency maps"
    assert list((kd_run / "attention").glob("epoch_*/maps.npz"))
    assert not (kd_run / "MODEL_CARD.md").exists(), "cards go next to the report, not into the run folder"
