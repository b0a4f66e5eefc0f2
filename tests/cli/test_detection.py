"""The detection configs through the `visiondistill` command: teacher → distilled student → validate."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from visiondistill.cli import main

from ..support.cli import tiny_overrides

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "detection"


def tiny(tmp_path: Path, name: str) -> list[str]:
    return tiny_overrides(tmp_path, name)


def test_teacher_then_distil_then_validate(tmp_path: Path):
    teacher = [*tiny(tmp_path, "teacher"), "--model.init_args.student.backbone=test_resnet"]
    assert main(["fit", "--config", str(CONFIGS / "shapes_teacher.yaml"), *teacher]) == 0
    checkpoint = tmp_path / "runs" / "teacher" / "checkpoints" / "best.ckpt"
    assert checkpoint.is_file()

    # The teacher's backbone and FPN are read from its checkpoint when left out.
    config = yaml.safe_load((CONFIGS / "shapes_distilled.yaml").read_text())
    config["model"]["init_args"]["teacher"] = {"checkpoint": str(checkpoint)}
    distilled = tmp_path / "distilled.yaml"
    distilled.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(distilled), *tiny(tmp_path, "distilled")]) == 0
    student = tmp_path / "runs" / "distilled" / "checkpoints" / "last.ckpt"
    saved = torch.load(student, weights_only=True)
    assert not any(k.startswith("teacher.") for k in saved["state_dict"])
    assert any(k.startswith("distill_adapters.cwd_fpn.") for k in saved["state_dict"])
    assert saved["hyper_parameters"]["student"]["backbone"] == "test_resnet"
    assert main(["validate", "--config", str(distilled), *tiny(tmp_path, "val"), f"--ckpt_path={student}"]) == 0
