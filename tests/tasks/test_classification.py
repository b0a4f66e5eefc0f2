"""ClassificationTask: training, teacher checkpoints, metrics and the errors a user can run into."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import timm
import torch
from safetensors.torch import save_file

from visiondistill.models import CheckpointError, ClassifierSpec
from visiondistill.reporting.cost import count_flops, count_parameters, measure_latency
from visiondistill.reporting.loader import load_task_module
from visiondistill.tasks import ClassificationTask


@pytest.fixture
def teacher_checkpoint(tmp_path: Path, tiny_loader, trainer_kwargs) -> Path:
    """A checkpoint written by a real teacher run (test_efficientnet, 4 classes)."""
    torch.manual_seed(0)
    task = ClassificationTask(student=ClassifierSpec(name="test_efficientnet"), num_classes=4)
    trainer = pl.Trainer(**trainer_kwargs, limit_train_batches=2)
    trainer.fit(task, tiny_loader)
    path = tmp_path / "teacher.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_teacher_loads_from_our_checkpoint_with_the_name_read_from_it(teacher_checkpoint: Path):
    trained = torch.load(teacher_checkpoint, weights_only=True)["state_dict"]
    task = ClassificationTask(
        student=ClassifierSpec(name="test_resnet"),
        teacher=ClassifierSpec(checkpoint=str(teacher_checkpoint)),
        num_classes=4,
    )
    assert type(task.teacher).__name__ == "EfficientNet"
    for key, value in task.teacher.state_dict().items():
        assert torch.equal(value, trained[f"student.{key}"])
    assert not task.teacher.training and not any(p.requires_grad for p in task.teacher.parameters())


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_teacher_loads_from_a_plain_weights_file(tmp_path: Path, suffix: str):
    source = timm.create_model("test_efficientnet", num_classes=4)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)
    task = ClassificationTask(
        student=ClassifierSpec(name="test_resnet"),
        teacher=ClassifierSpec(name="test_efficientnet", checkpoint=str(path)),
        num_classes=4,
    )
    for key, value in source.state_dict().items():
        assert torch.equal(task.teacher.state_dict()[key], value)


def test_missing_teacher_checkpoint_is_named(tmp_path: Path):
    missing = tmp_path / "nope" / "best.ckpt"
    with pytest.raises(CheckpointError, match=rf"checkpoint '{missing}' does not exist.*train the teacher first"):
        ClassificationTask(
            student=ClassifierSpec(name="test_resnet"),
            teacher=ClassifierSpec(name="resnet18", checkpoint=str(missing)),
            num_classes=4,
        )


def test_teacher_checkpoint_for_another_number_of_classes(teacher_checkpoint: Path):
    with pytest.raises(CheckpointError, match=r"checkpoint has 4 classes but the model is built for 6"):
        ClassificationTask(
            student=ClassifierSpec(name="test_resnet"),
            teacher=ClassifierSpec(checkpoint=str(teacher_checkpoint)),
            num_classes=6,
        )


def test_corrupt_checkpoint_file_is_named(tmp_path: Path):
    path = tmp_path / "broken.ckpt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=rf"cannot read checkpoint '{path}'"):
        ClassificationTask(
            student=ClassifierSpec(name="test_resnet"),
            teacher=ClassifierSpec(name="resnet18", checkpoint=str(path)),
            num_classes=4,
        )


def test_class_count_and_channel_mismatches_between_specs():
    with pytest.raises(ValueError, match="teacher is configured for 10 classes but the task has 4"):
        ClassificationTask(
            student=ClassifierSpec(name="test_resnet"),
            teacher=ClassifierSpec(name="resnet18", num_classes=10),
            num_classes=4,
        )
    with pytest.raises(ValueError, match="teacher takes 3 input channels but the student takes 1"):
        ClassificationTask(
            student=ClassifierSpec(name="test_resnet", in_channels=1),
            teacher=ClassifierSpec(name="resnet18"),
            num_classes=4,
        )
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet_18'"):
        ClassificationTask(student=ClassifierSpec(name="resnet_18"), num_classes=4)
    with pytest.raises(TypeError, match=r"unknown keys \['nmae'\]"):
        ClassificationTask(student={"nmae": "resnet18"}, num_classes=4)


class FourClassData(pl.LightningDataModule):
    def __init__(self, loader, num_classes: int) -> None:
        super().__init__()
        self.loader, self.num_classes, self.in_channels = loader, num_classes, 3
        self.class_names = [f"c{i}" for i in range(num_classes)]

    def train_dataloader(self):
        return self.loader


def test_data_with_another_number_of_classes_fails_at_setup(tiny_loader, trainer_kwargs):
    task = ClassificationTask(student=ClassifierSpec(name="test_resnet"), num_classes=6)
    with pytest.raises(ValueError, match="the data has 4 classes but the model is built for 6"):
        pl.Trainer(**trainer_kwargs).fit(task, datamodule=FourClassData(tiny_loader, 4))


def test_grayscale_student_trains(trainer_kwargs):
    images = torch.randn(16, 1, 32, 32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, torch.arange(16) % 4), batch_size=8)
    task = ClassificationTask(student=ClassifierSpec(name="test_resnet", in_channels=1), num_classes=4)
    pl.Trainer(**trainer_kwargs).fit(task, loader)


def test_metrics_and_checkpoint_round_trip(tmp_path: Path, tiny_loader, trainer_kwargs):
    task = ClassificationTask(student=ClassifierSpec(name="test_resnet"), num_classes=4, lr=3e-3)
    trainer = pl.Trainer(**{**trainer_kwargs, "max_epochs": 2})
    trainer.fit(task, tiny_loader, tiny_loader)
    logged = trainer.logged_metrics
    for key in ("val/acc_top1", "val/loss", "val/acc_class/0", "train/loss_epoch"):
        assert torch.isfinite(logged[key]), key
    path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(path)
    module = load_task_module(path)
    assert isinstance(module, ClassificationTask) and module.teacher is None
    assert module.hparams["student"]["name"] == "test_resnet"
    results = pl.Trainer(**trainer_kwargs).test(module, tiny_loader, verbose=False)[0]
    images, targets = tiny_loader.dataset.tensors
    with torch.no_grad():
        expected = (task.student.eval()(images).argmax(-1) == targets).float().mean().item()
    assert results["test/acc_top1"] == pytest.approx(expected)
    model = module.student
    assert count_parameters(model) == sum(p.numel() for p in task.student.parameters())
    assert count_flops(model, images[:1]) > 0 and measure_latency(model, images[:1], warmup=1, runs=3) > 0


def test_task_and_shapes_datamodule_log_hparams_together(tmp_path: Path):
    from pytorch_lightning.loggers import TensorBoardLogger

    from visiondistill.data import ShapesClassification

    data = ShapesClassification(
        str(tmp_path / "data"), image_size=32, num_train=24, num_val=12, num_test=0, batch_size=8, num_workers=0
    )
    task = ClassificationTask(student=ClassifierSpec(name="test_resnet"), num_classes=6)
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=TensorBoardLogger(tmp_path, name="run"),
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer.fit(task, datamodule=data)
    assert task.class_names == list(data.class_names)
