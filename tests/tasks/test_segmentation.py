"""SegmentationTask: trains, logs mIoU / per-class IoU / Dice, and refuses mismatched data and teachers."""

from __future__ import annotations

import dataclasses

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from visiondistill.models import CheckpointError, SegmenterSpec
from visiondistill.tasks import SegmentationTask

from ..support.segmentation import TINY_STUDENT, TINY_TEACHER, square_masks


@pytest.mark.parametrize("loss", ["ce", "dice", "ce+dice"])
def test_fit_logs_segmentation_metrics(loss: str, seg_loader: DataLoader, trainer_kwargs: dict):
    task = SegmentationTask(student=TINY_STUDENT, num_classes=3, class_names=["bg", "a", "b"], loss=loss)
    trainer = pl.Trainer(**trainer_kwargs, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(task, seg_loader, seg_loader)
    metrics = trainer.callback_metrics
    for key in ("val/miou", "val/dice", "val/iou/bg", "val/iou/a", "val/iou/b", "train/task_loss"):
        assert key in metrics and torch.isfinite(metrics[key])
    per_class = [float(metrics[f"val/iou/{c}"]) for c in ("bg", "a", "b")]
    assert float(metrics["val/miou"]) == pytest.approx(sum(per_class) / 3)


def test_ignore_index_pixels_do_not_count(seg_loader: DataLoader):
    task = SegmentationTask(student=TINY_STUDENT, num_classes=3, loss="ce+dice", ignore_index=255)
    images, masks = next(iter(seg_loader))
    logits = task(images)
    unlabelled = masks.clone()
    unlabelled[:, :16] = 255
    # Changing the logits only where the mask is ignored leaves the loss unchanged.
    changed = logits.clone()
    changed[:, :, :16] += 10 * torch.randn_like(changed[:, :, :16])
    assert torch.allclose(task.task_loss(logits, (images, unlabelled)), task.task_loss(changed, (images, unlabelled)))


class _FixedLogits(torch.nn.Module):
    """A student that predicts the same classes for every image, whatever it sees."""

    def __init__(self, classes: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("logits", 10.0 * F.one_hot(classes, num_classes).permute(2, 0, 1).float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(images.shape[0], -1, -1, -1)


def test_ignored_pixels_stay_out_of_the_validation_iou(trainer_kwargs: dict):
    # Four pixels: two labelled and predicted right, two unlabelled (255) that the student calls class 1. Counting
    # the unlabelled pixels (e.g. as background) would turn IoU [1, 1, 0] into [1/3, 1/3, 0].
    masks = torch.tensor([[[0, 1], [255, 255]]])
    task = SegmentationTask(student=TINY_STUDENT, num_classes=3, class_names=["bg", "a", "b"], ignore_index=255)
    task.student = _FixedLogits(torch.tensor([[0, 1], [1, 1]]), num_classes=3)
    loader = DataLoader(TensorDataset(torch.zeros(1, 3, 2, 2), masks), batch_size=1)
    (results,) = pl.Trainer(**trainer_kwargs).validate(task, loader, verbose=False)
    per_class = [results[f"val/iou/{name}"] for name in ("bg", "a", "b")]
    assert per_class == pytest.approx([1.0, 1.0, 0.0]), per_class
    assert results["val/miou"] == pytest.approx(2 / 3) and results["val/dice"] == pytest.approx(2 / 3)


def test_teacher_for_other_classes_is_refused(tmp_path):
    with pytest.raises(ValueError, match="teacher is configured for 5 classes but the task has 3"):
        SegmentationTask(student=TINY_STUDENT, teacher=dataclasses.replace(TINY_TEACHER, num_classes=5), num_classes=3)
    other = SegmentationTask(student=TINY_TEACHER, num_classes=5)
    path = tmp_path / "teacher5.pt"
    torch.save(other.student.state_dict(), path)
    with pytest.raises(CheckpointError, match="predicts 5 classes but the task has 3"):
        SegmentationTask(
            student=TINY_STUDENT, teacher=dataclasses.replace(TINY_TEACHER, checkpoint=str(path)), num_classes=3
        )


def test_teacher_and_student_must_take_the_same_channels():
    with pytest.raises(ValueError, match="same in_channels"):
        SegmentationTask(student=TINY_STUDENT, teacher=dataclasses.replace(TINY_TEACHER, in_channels=1), num_classes=3)


class _Data(pl.LightningDataModule):
    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels

    def train_dataloader(self) -> DataLoader:
        return DataLoader(square_masks(8), batch_size=4)


@pytest.mark.parametrize(("data", "message"), [(_Data(4), "data has 4 classes"), (_Data(3, 1), "data has 1 channels")])
def test_data_mismatch_fails_at_setup(data: _Data, message: str, trainer_kwargs: dict):
    task = SegmentationTask(student=TINY_STUDENT, num_classes=3)
    with pytest.raises(ValueError, match=message):
        pl.Trainer(**trainer_kwargs, limit_train_batches=1).fit(task, datamodule=data)


def test_spec_from_a_mapping_and_unknown_keys():
    task = SegmentationTask(student={"arch": "Unet", "encoder_name": "tu-test_resnet"}, num_classes=2)
    assert isinstance(task.student_spec, SegmenterSpec)
    with pytest.raises(TypeError, match=r"unknown keys \['encoder'\]"):
        SegmentationTask(student={"arch": "Unet", "encoder": "resnet18"}, num_classes=2)
