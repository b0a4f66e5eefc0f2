"""Training on labeled + unlabeled batches: the task loss reads the labeled rows, distillation reads every row."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.combined_loader import CombinedLoader
from torch.utils.data import DataLoader

from visiondistill.core.protocol import split_training_batch, targets_or
from visiondistill.data import ShapesClassification, SyntheticLesions
from visiondistill.distill import DecoupledDistillation, LogitDistillation, PixelwiseDistillation
from visiondistill.tasks import ClassificationTask, SegmentationTask

from ..conftest import quadrant_images

LABELED, UNLABELED = 4, 6


class SpyKD(LogitDistillation):
    """Records what the KD term is given at every step."""

    def __init__(self) -> None:
        super().__init__(temperature=2.0)
        self.seen: list[tuple[int, int, int]] = []

    def compute_loss(self, pl_module, batch, student_out, teacher_out):
        self.seen.append((student_out.shape[0], teacher_out.shape[0], int(batch["labeled"].sum())))
        return super().compute_loss(pl_module, batch, student_out, teacher_out)


class RecordingTask(ClassificationTask):
    """Keeps the task loss of each step beside the student's output on the whole step."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.student.register_forward_hook(lambda module, args, out: setattr(self, "_last_out", out.detach()))

    def task_loss(self, student_out, batch):
        loss = super().task_loss(student_out, batch)
        self.records.append((loss.detach(), self._last_out, batch[1]))
        return loss


def combined_loader() -> CombinedLoader:
    labeled = DataLoader(quadrant_images(8, num_classes=4, seed=1), batch_size=LABELED)
    unlabeled = DataLoader(quadrant_images(12, num_classes=4, seed=2).tensors[0], batch_size=UNLABELED)
    return CombinedLoader({"labeled": labeled, "unlabeled": unlabeled}, mode="max_size_cycle")


def test_task_loss_is_the_cross_entropy_of_the_labeled_rows_and_kd_sees_all(trainer_kwargs):
    spy = SpyKD()
    task = RecordingTask(student={"name": "test_resnet"}, teacher={"name": "test_resnet"}, num_classes=4)
    pl.Trainer(**{**trainer_kwargs, "max_steps": 2}, callbacks=[spy]).fit(task, train_dataloaders=combined_loader())
    assert spy.seen == [(LABELED + UNLABELED, LABELED + UNLABELED, LABELED)] * 2
    assert len(task.records) == 2
    for loss, whole_step, targets in task.records:
        assert whole_step.shape[0] == LABELED + UNLABELED
        torch.testing.assert_close(loss, F.cross_entropy(whole_step[:LABELED], targets))
        # ... and not the cross-entropy of any other rows (e.g. the unlabeled ones read as if they had these labels)
        assert not torch.allclose(loss, F.cross_entropy(whole_step[-LABELED:], targets))


def test_decoupled_kd_takes_the_teachers_prediction_on_unlabeled_rows():
    targets = torch.tensor([2, 0])
    step = split_training_batch({"labeled": (torch.zeros(2, 3, 4, 4), targets), "unlabeled": torch.zeros(3, 3, 4, 4)})
    teacher = torch.tensor([[0.0, 1.0, 0.0]] * 5)
    assert targets_or(step.distill, teacher.argmax(dim=1)).tolist() == [2, 0, 1, 1, 1]
    plain = (torch.zeros(2, 3, 4, 4), targets)
    assert targets_or(split_training_batch(plain).distill, teacher[:2].argmax(dim=1)).tolist() == [2, 0]


def test_decoupled_kd_trains_on_a_combined_loader(trainer_kwargs):
    task = ClassificationTask(student={"name": "test_resnet"}, teacher={"name": "test_resnet"}, num_classes=4)
    trainer = pl.Trainer(**{**trainer_kwargs, "max_steps": 1}, callbacks=[DecoupledDistillation(warmup_epochs=0)])
    trainer.fit(task, train_dataloaders=combined_loader())
    assert trainer.global_step == 1


def test_shapes_classification_with_labeled_fraction_trains_two_steps(tmp_path: Path, trainer_kwargs):
    data = ShapesClassification(
        str(tmp_path / "shapes"),
        image_size=32,
        batch_size=4,
        num_workers=0,
        num_train=36,
        num_val=6,
        num_test=0,
        labeled_fraction=0.34,
        verify_images=False,
    )
    spy = SpyKD()
    task = ClassificationTask(student={"name": "test_resnet"}, teacher={"name": "test_resnet"}, num_classes=6)
    trainer = pl.Trainer(**{**trainer_kwargs, "max_steps": 2, "val_check_interval": 2}, callbacks=[spy])
    trainer.fit(task, data)
    assert trainer.global_step == 2 and len(data.train_dataset) == 12 and len(data.unlabeled_dataset) == 24
    assert spy.seen == [(8, 8, 4)] * 2
    assert "val/acc_top1" in trainer.callback_metrics  # validation reads the labeled val split


def test_lesions_with_a_third_of_the_masks_train_two_steps(tmp_path: Path, trainer_kwargs):
    data = SyntheticLesions(
        str(tmp_path),
        image_size=32,
        batch_size=2,
        num_workers=0,
        num_train=30,
        num_val=4,
        num_test=0,
        labeled_fraction=0.34,
        verify=False,
    )
    student = {
        "arch": "Unet",
        "encoder_name": "tu-test_resnet",
        "in_channels": 1,
        "kwargs": {"decoder_channels": [8, 8, 8, 8, 8]},
    }
    task = SegmentationTask(student=student, teacher=student, num_classes=4)
    kd = PixelwiseDistillation()
    seen = []
    original = kd.compute_loss
    kd.compute_loss = lambda module, batch, s, t: seen.append(s.shape[0]) or original(module, batch, s, t)
    trainer = pl.Trainer(**{**trainer_kwargs, "max_steps": 2, "limit_val_batches": 1}, callbacks=[kd])
    trainer.fit(task, data)
    assert trainer.global_step == 2 and seen == [4, 4]
    assert len(data.train_dataset) + len(data.unlabeled_dataset) == 30
