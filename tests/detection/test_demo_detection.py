"""The detection section of `make demo`, shrunk to tiny data and one short epoch per run."""

from __future__ import annotations

from pathlib import Path

import yaml

from visiondistill.demo import main

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "detection").glob("*.yaml"))


def test_detection_configs_keep_the_best_map_checkpoint():
    assert {p.name for p in CONFIGS} >= {"shapes_teacher.yaml", "shapes_student_scratch.yaml", "shapes_distilled.yaml"}
    for path in CONFIGS:
        config = yaml.safe_load(path.read_text())
        assert config["model"]["class_path"] == "visiondistill.tasks.DetectionTask", path
        monitors = [
            c["init_args"].get("monitor") for c in config["trainer"]["callbacks"] if "Checkpoint" in c["class_path"]
        ]
        assert monitors == ["val/map"], path


# Three CLI runs in subprocesses (which also parse every config): 134 s measured on two heavily shared CPU cores.
def test_quick_detection_demo_writes_the_report(tmp_path: Path):
    out = tmp_path / "demo"
    args = ["--task", "detection", "--quick", "--runs", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data")]
    assert main([*args, "--out", str(out)]) == 0
    report = (out / "detection" / "report.md").read_text()
    for expected in ("teacher (FCOS resnet18", "student, scratch", "student, distilled", "mAP (test)", "circle"):
        assert expected in report
    assert (out / "detection" / "detections.png").is_file()
    assert (tmp_path / "runs" / "detection" / "student_distilled" / "checkpoints" / "best.ckpt").is_file()
