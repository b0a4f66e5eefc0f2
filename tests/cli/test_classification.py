"""The `visiondistill` command: every shipped config instantiates, and fit → distil works end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from visiondistill.cli import VisionDistillCLI, main
from visiondistill.distill import DistillationCallback
from visiondistill.tasks import DistillationTask

from ..support import cli as support_cli

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def tiny_overrides(tmp_path: Path, name: str) -> list[str]:
    """Command-line overrides that shrink any shipped classification config to a seconds-long run."""
    return support_cli.tiny_overrides(tmp_path, name, num_train=48, num_val=16, num_test=16, batch_size=8)


def edited_config(config: Path, tmp_path: Path, **model_args) -> Path:
    """A copy of a shipped config with some model arguments replaced.

    Nested model specs are edited in the file: jsonargparse does not take dotted command-line overrides
    (`--model.init_args.teacher.name=…`) into dataclass arguments of a `class_path` model reliably.
    """
    data = yaml.safe_load(config.read_text())
    data["model"]["init_args"].update(model_args)
    path = tmp_path / f"edited_{config.name}"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(ROOT / "configs")) for c in CONFIGS])
def test_every_shipped_config_instantiates(config: Path, tmp_path: Path):
    text = config.read_text()
    if "checkpoint:" in text:  # distilled runs need trained teachers; any weights will do to instantiate
        model_args = yaml.safe_load(text)["model"]["init_args"]
        edits = {}
        if "teacher" in model_args:
            edits["teacher"] = {k: v for k, v in model_args["teacher"].items() if k != "checkpoint"}
        if "teachers" in model_args:  # several teachers (docs/teachers.md), e.g. one per head of a multi-task student
            edits["teachers"] = [{k: v for k, v in t.items() if k != "checkpoint"} for t in model_args["teachers"]]
        config = edited_config(config, tmp_path, **edits)
    args = ["--config", str(config), f"--trainer.default_root_dir={tmp_path}"]
    cli = VisionDistillCLI(args=args, run=False)
    assert isinstance(cli.model, DistillationTask)
    assert cli.datamodule is not None
    distillers = [cb for cb in cli.trainer.callbacks if isinstance(cb, DistillationCallback)]
    if "teacher:" in text:
        assert cli.model.teacher is not None and distillers, f"{config.name} distils without callbacks"
    else:
        assert cli.model.teacher is None and not distillers


def test_config_typo_fails_with_the_key_named(tmp_path: Path, capsys):
    config = ROOT / "configs/classification/shapes_teacher.yaml"
    with pytest.raises(SystemExit):
        VisionDistillCLI(args=["--config", str(config), "--model.init_args.studnet.name=resnet18"], run=False)
    assert "studnet" in capsys.readouterr().err


def test_fit_teacher_then_distil_from_its_checkpoint(tmp_path: Path):
    configs = ROOT / "configs/classification"
    teacher_config = edited_config(configs / "shapes_teacher.yaml", tmp_path, student={"name": "test_efficientnet"})
    teacher_args = ["fit", "--config", str(teacher_config), *tiny_overrides(tmp_path, "teacher")]
    assert main(teacher_args) == 0
    run_dir = tmp_path / "runs" / "teacher"
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    assert checkpoint.is_file() and (run_dir / "config.yaml").is_file()
    assert list(run_dir.glob("events.out.tfevents.*")), "TensorBoard is the default logger"

    # The teacher's architecture is read from its checkpoint when the name is left out.
    kd_config = edited_config(configs / "shapes_kd.yaml", tmp_path, teacher={"checkpoint": str(checkpoint)})
    student_args = ["fit", "--config", str(kd_config), *tiny_overrides(tmp_path, "kd")]
    assert main(student_args) == 0
    kd_checkpoint = torch.load(tmp_path / "runs" / "kd" / "checkpoints" / "last.ckpt", weights_only=True)
    assert kd_checkpoint["hyper_parameters"]["teacher"]["checkpoint"] == str(checkpoint)
    assert not any(k.startswith("teacher.") for k in kd_checkpoint["state_dict"])

    validate_args = ["validate", "--config", str(kd_config), *tiny_overrides(tmp_path, "kd_val")]
    validate_args.append(f"--ckpt_path={tmp_path / 'runs' / 'kd' / 'checkpoints' / 'last.ckpt'}")
    assert main(validate_args) == 0


def test_synth_subcommand_writes_the_data_set(tmp_path: Path, capsys):
    out = tmp_path / "shapes"
    args = ["synth", "--out", str(out), "--image-size", "32", "--num-train", "12", "--num-val", "6", "--num-test", "6"]
    assert main(args) == 0
    assert (out / "meta.json").is_file()
    assert (out / "coco" / "annotations" / "instances_train.json").is_file()
    assert len(list((out / "classification" / "train").rglob("*.png"))) == 12
