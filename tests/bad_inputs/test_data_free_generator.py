"""Bad DAFL (generator-based data-free) settings: each refused with our own error naming the setting and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch import nn

from visiondistill.core.errors import ConfigError
from visiondistill.core.protocol import ProtocolError
from visiondistill.data import DAFL, DAFLDataFreeClassification, DAFLSettings, TeacherWithoutClassifierError
from visiondistill.tasks import ClassificationTask

from ..support.bad_inputs import expect_cli_error, expect_user_error

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("setting", "value", "names"),
    [
        ("image_size", 30, ("image_size", "multiple of 4", "30")),
        ("latent_dim", 0, ("latent_dim", ">= 1", "0")),
        ("hidden_channels", 1.5, ("hidden_channels", "1.5")),
        ("generator_lr", -0.1, ("generator_lr", "positive", "-0.1")),
        ("generator_lr", float("inf"), ("generator_lr", "inf")),
        ("entropy_weight", float("nan"), ("entropy_weight", "nan")),
        ("entropy_weight", float("inf"), ("entropy_weight", "inf")),
        ("activation_weight", -1.0, ("activation_weight", ">= 0", "-1.0")),
        ("one_hot_weight", "1", ("one_hot_weight", "'1'")),
        ("generator_steps", 0, ("generator_steps", ">= 1")),
        ("batch_size", 0, ("batch_size", ">= 1")),
        ("num_classes", 1, ("num_classes", ">= 2")),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_setting_is_named(setting: str, value: object, names: tuple[str, ...]):
    expect_user_error(lambda: DAFLDataFreeClassification(**{setting: value}), *names, error_type=ConfigError)


def fit(task: ClassificationTask, tmp_path: Path, **settings: object) -> None:
    datamodule = DAFLDataFreeClassification(
        num_classes=3, image_size=16, batch_size=2, batches_per_epoch=1, latent_dim=4, hidden_channels=4, **settings
    )
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(task, datamodule=datamodule)


def _headless_teacher() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())  # logits, no nn.Linear


def test_a_teacher_without_a_linear_classifier_is_refused_with_the_fix(tmp_path: Path):
    task = ClassificationTask(student={"name": "test_resnet"}, teacher={"name": "test_resnet"}, num_classes=3)
    task.teacher = _headless_teacher()
    expect_user_error(
        lambda: fit(task, tmp_path), "Sequential", "nn.Linear", "activation_weight: 0",
        error_type=TeacherWithoutClassifierError,
    )  # fmt: skip


def test_the_fix_works_a_headless_teacher_with_activation_weight_0():
    images, terms = DAFL(16, settings=DAFLSettings(latent_dim=4, hidden_channels=4, activation_weight=0.0)).step(
        _headless_teacher(), torch.randn(2, 4)
    )
    assert images.shape == (2, 3, 16, 16) and terms["activation"] == 0.0


def test_a_task_without_teacher_is_refused(tmp_path: Path):
    task = ClassificationTask(student={"name": "test_resnet"}, num_classes=3)
    expect_user_error(lambda: fit(task, tmp_path), "DAFLDataFreeClassification", "teacher", error_type=ProtocolError)


def test_cli_names_the_bad_setting(capsys, tmp_path: Path):
    config = yaml.safe_load((ROOT / "configs/classification/shapes_datafree_dafl.yaml").read_text())
    config["model"]["init_args"]["teacher"] = {"name": "test_resnet"}  # no checkpoint needed to reach the data
    path = tmp_path / "dafl.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = ["fit", "--config", str(path), "--data.init_args.image_size=50", f"--trainer.default_root_dir={tmp_path}"]
    expect_cli_error(argv, capsys, "image_size", "multiple of 4", "50")
