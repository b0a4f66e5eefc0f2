"""The detection section of `make demo`, shrunk to tiny data and one short epoch per run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
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
@pytest.mark.slow  # 176 s on 2 loaded cores; make test-all runs it
def test_quick_detection_demo_writes_the_report(tmp_path: Path):
    out = tmp_path / "demo"
    args = ["--task", "detection", "--quick", "--runs", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data")]
    assert main([*args, "--out", str(out)]) == 0
    report = (out / "detection" / "report.md").read_text()
    for expected in ("| teacher | teacher |", "| student_distilled | distilled |", "test/map", "Per-class `test/map`"):
        assert expected in report
    # The detection section: box counts, each student's mAP@50 against the teacher's boxes, the grid.
    section = report.split("## Detection: boxes", 1)[1]
    assert "Test split: 16 images" in section and "| student | mAP@50 vs teacher's boxes |" in section
    assert re.search(r"^\| student_distilled \| ([0-9.]+|– \(no teacher box ≥ 0.5\)) \|$", section, flags=re.MULTILINE)
    assert "![" in section and (out / "detection" / "detections.png").stat().st_size > 1000
    assert (tmp_path / "runs" / "detection" / "student_distilled" / "checkpoints" / "best.ckpt").is_file()
