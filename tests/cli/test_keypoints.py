"""The keypoint configs end to end through the `visiondistill` command: teacher → distilled student → validate."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from visiondistill.cli import main

from ..support.cli import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "keypoints"


def tiny(tmp_path: Path, name: str) -> list[str]:
    return tiny_overrides(tmp_path, name, num_train=12, num_val=6, extra=("--data.init_args.input_size=32",))


def test_teacher_then_distil_then_validate(tmp_path: Path):
    teacher = yaml.safe_load((CONFIGS / "shapes_teacher.yaml").read_text())
    teacher["model"]["init_args"]["student"] = {"backbone": "test_resnet", "stage": -2, "deconv_channels": [8, 8]}
    teacher_config = tmp_path / "teacher.yaml"
    teacher_config.write_text(yaml.safe_dump(teacher))
    assert main(["fit", "--config", str(teacher_config), *tiny(tmp_path, "teacher")]) == 0
    checkpoint = tmp_path / "runs" / "teacher" / "checkpoints" / "best.ckpt"
    assert checkpoint.is_file()

    # The teacher's backbone, stage and head are read from its checkpoint when left out.
    config = yaml.safe_load((CONFIGS / "shapes_distilled.yaml").read_text())
    config["model"]["init_args"]["teacher"] = {"checkpoint": str(checkpoint)}
    config["trainer"]["callbacks"] = [c for c in config["trainer"]["callbacks"] if "explain" not in c["class_path"]]
    distilled = tmp_path / "distilled.yaml"
    distilled.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(distilled), *tiny(tmp_path, "distilled")]) == 0
    student = tmp_path / "runs" / "distilled" / "checkpoints" / "last.ckpt"
    saved = torch.load(student, weights_only=True)
    assert not any(k.startswith("teacher.") for k in saved["state_dict"])
    assert saved["hyper_parameters"]["teacher"]["checkpoint"] == str(checkpoint)
    assert main(["validate", "--config", str(distilled), *tiny(tmp_path, "val"), f"--ckpt_path={student}"]) == 0
