"""Bad data-free settings: each refused with our own error that names the setting, the value and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import yaml
from torch import nn

from visiondistill.core.errors import ConfigError
from visiondistill.core.protocol import ProtocolError
from visiondistill.data import DataFreeClassification, ShapesClassification, TeacherWithoutBatchNormError
from visiondistill.data.inversion import DeepInversion
from visiondistill.tasks import ClassificationTask

from ..support.bad_inputs import expect_cli_error, expect_user_error

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("setting", "value", "names"),
    [
        ("batch_size", 0, ("batch_size", ">= 1", "0")),
        ("batches_per_epoch", 1.5, ("batches_per_epoch", "1.5")),
        ("image_size", 4, ("image_size", ">= 8")),
        ("num_classes", 1, ("num_classes", ">= 2")),
        ("iterations", 0, ("iterations", ">= 1")),
        ("lr", -0.1, ("lr", "positive", "-0.1")),
        ("bn_weight", float("nan"), ("bn_weight", "nan")),
        ("tv_l2_weight", -1.0, ("tv_l2_weight", ">= 0")),
        ("jitter", -2, ("jitter", "pixels", "-2")),
        ("class_names", ["a", "b"], ("class_names", "num_classes=6")),
        ("mean", [0.5, 0.5], ("mean", "in_channels=3")),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_setting_is_named(setting: str, value: object, names: tuple[str, ...]):
    expect_user_error(lambda: DataFreeClassification(**{setting: value}), *names, error_type=ConfigError)


def test_eval_data_of_another_size_is_refused():
    eval_data = ShapesClassification("nowhere", image_size=64, num_workers=0)
    build = lambda: DataFreeClassification(image_size=32, eval_data=eval_data)  # noqa: E731
    expect_user_error(build, "image_size=64", "32", error_type=ConfigError)


def test_eval_data_of_other_classes_is_refused_at_setup(tmp_path: Path):
    eval_data = ShapesClassification(
        str(tmp_path / "data"), image_size=32, num_workers=0, num_train=6, num_val=6, num_test=0
    )
    datamodule = DataFreeClassification(num_classes=4, image_size=32, eval_data=eval_data)
    datamodule.prepare_data()
    expect_user_error(lambda: datamodule.setup("fit"), "6 classes", "num_classes: 6", error_type=ConfigError)


def fit(task: ClassificationTask, tmp_path: Path) -> None:
    datamodule = DataFreeClassification(num_classes=3, image_size=32, batch_size=2, batches_per_epoch=1, iterations=1)
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(task, datamodule=datamodule)


def test_teacher_without_batchnorm_is_refused_with_the_fix(tmp_path: Path):
    task = ClassificationTask(student={"name": "test_resnet"}, teacher={"name": "test_resnet"}, num_classes=3)
    task.teacher = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    expect_user_error(
        lambda: fit(task, tmp_path), "Sequential", "BatchNorm2d", "use a teacher with batch norm",
        error_type=TeacherWithoutBatchNormError,
    )  # fmt: skip


def test_a_task_without_teacher_is_refused(tmp_path: Path):
    task = ClassificationTask(student={"name": "test_resnet"}, num_classes=3)
    expect_user_error(lambda: fit(task, tmp_path), "DataFreeClassification", "teacher", error_type=ProtocolError)


def test_images_of_another_channel_count_than_the_normalisation_are_refused():
    inversion = DeepInversion(nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)))
    expect_user_error(lambda: inversion.pixel_range(2, device="cpu"), "3 values", "2 channels", error_type=ConfigError)


def test_cli_names_the_bad_setting(capsys, tmp_path: Path):
    config = yaml.safe_load((ROOT / "configs/classification/shapes_datafree.yaml").read_text())
    config["model"]["init_args"]["teacher"] = {"name": "test_resnet"}  # no checkpoint needed to reach the data
    path = tmp_path / "datafree.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = ["fit", "--config", str(path), "--data.init_args.iterations=0", f"--trainer.default_root_dir={tmp_path}"]
    expect_cli_error(argv, capsys, "iterations", ">= 1")
