"""MultiTaskModule: one backbone, a classification and a segmentation head, each distilled from its own teacher."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback

from visiondistill.core.teachers import head_output
from visiondistill.data import SHAPE_CLASSES, ShapesMultiTask
from visiondistill.data.multitask import dominant_class
from visiondistill.distill import LogitDistillation, PixelwiseDistillation, losses

from ..support.multitask import multitask_loader, tiny_multitask


class _FirstBatch(Callback):
    """Keeps the first training batch, as the step saw it."""

    def __init__(self) -> None:
        self.batch = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.batch is None:
            self.batch = {key: value.clone() for key, value in batch.items()}


def _terms() -> list:
    return [
        LogitDistillation(temperature=2.0, teacher="cls_t"),
        PixelwiseDistillation(temperature=3.0, teacher="seg_t"),
    ]


def test_trains_and_logs_per_task_metrics(trainer_kwargs: dict):
    module = tiny_multitask()
    loader = multitask_loader()
    trainer = pl.Trainer(**trainer_kwargs, callbacks=_terms(), limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, loader, loader)
    metrics = trainer.callback_metrics
    assert trainer.global_step == 2
    keys = [
        "val/cls/acc_top1", "val/cls/loss", "val/seg/miou", "val/seg/dice", "val/seg/loss", "val/loss",
        "train/cls/loss", "train/seg/loss", "train/distill/kd_epoch", "train/distill/pixelwise_kd_epoch",
    ]  # fmt: skip
    for key in keys:
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert float(metrics["val/loss"]) == pytest.approx(float(metrics["val/cls/loss"] + metrics["val/seg/loss"]))


def test_each_head_learns_from_its_own_term(trainer_kwargs: dict):
    # Task losses off: whatever moves a head in these steps is its distillation term.
    module = tiny_multitask(task_weights={"cls": 0.0, "seg": 0.0}, lr=0.05, weight_decay=0.0)
    before = {name: p.detach().clone() for name, p in module.student.named_parameters()}
    trainer = pl.Trainer(**trainer_kwargs, callbacks=_terms(), limit_train_batches=2, limit_val_batches=0)
    trainer.fit(module, multitask_loader())
    moved = {name for name, p in module.student.named_parameters() if not torch.equal(before[name], p.detach())}
    assert {"classifier.weight", "decoder.3.weight"} <= moved
    assert any(name.startswith("backbone.") for name in moved)


def test_the_terms_reach_only_their_own_head():
    module = tiny_multitask()
    batch = next(iter(multitask_loader()))
    images = batch["image"]
    with torch.no_grad():
        module.teacher_outputs = {tid: teacher(images) for tid, teacher in module.teachers.items()}
    for term, own, other in [(_terms()[0], "classifier.", "decoder."), (_terms()[1], "decoder.", "classifier.")]:
        module.student.zero_grad(set_to_none=True)
        out = module.student(images)
        term.compute_loss(module, batch, head_output(module, term.teacher_id, out, "test"), None).backward()
        grads = {name: p.grad for name, p in module.student.named_parameters()}
        assert all(
            g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(own) and "bias" not in n
        )
        assert all(g is None for n, g in grads.items() if n.startswith(other))


def test_each_callback_reads_its_head_and_its_teacher(trainer_kwargs: dict):
    # lr 0: the student is the same after the step, so the logged terms can be recomputed from the kept batch.
    module = tiny_multitask(lr=0.0, weight_decay=0.0)
    spy = _FirstBatch()
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[*_terms(), spy], max_steps=1, limit_val_batches=0)
    trainer.fit(module, multitask_loader())
    images = spy.batch["image"]
    with torch.no_grad():
        out = module.student.train()(images)
        cls_teacher, seg_teacher = module.teachers["cls_t"](images), module.teachers["seg_t"](images)
        expected_kd = losses.kd_loss(out["cls"], cls_teacher, temperature=2.0)
        expected_pixel = losses.pixelwise_kd_loss(out["seg"], seg_teacher, temperature=3.0)
    metrics = trainer.callback_metrics
    assert float(metrics["train/distill/kd_step"]) == pytest.approx(float(expected_kd), rel=1e-4)
    assert float(metrics["train/distill/pixelwise_kd_step"]) == pytest.approx(float(expected_pixel), rel=1e-4)
    assert float(expected_kd) > 0 and float(expected_pixel) > 0


def test_task_loss_is_the_weighted_sum_of_the_heads_losses():
    module = tiny_multitask(task_weights={"cls": 0.25, "seg": 2.0})
    batch = next(iter(multitask_loader()))
    out = module.student(batch["image"])
    expected = 0.25 * F.cross_entropy(out["cls"], batch["label"]) + 2.0 * F.cross_entropy(out["seg"], batch["mask"])
    module.log = lambda *args, **kwargs: None  # outside a Trainer
    assert torch.allclose(module.task_loss(out, batch), expected)


def test_dominant_class_counts_pixels_per_class():
    mask = torch.tensor([[0, 1, 1, 2], [0, 2, 2, 2], [255, 255, 255, 255]])
    assert dominant_class(mask, num_classes=3, ignore_index=255) == 1  # value 2: 4 pixels, value 1: 2
    assert dominant_class(torch.tensor([[1, 1, 2]]), num_classes=3) == 0
    assert dominant_class(torch.zeros(2, 2, dtype=torch.long), num_classes=3) == -1


def test_shapes_multitask_gives_a_class_and_a_mask_per_image(tmp_path):
    data = ShapesMultiTask(
        str(tmp_path / "shapes"), image_size=32, batch_size=4, num_workers=0, num_train=8, num_val=4, num_test=0
    )
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    assert sorted(batch) == ["image", "label", "mask"]
    assert batch["image"].shape == (4, 3, 32, 32) and batch["mask"].shape == (4, 32, 32)
    for mask, label in zip(batch["mask"], batch["label"], strict=True):
        counts = torch.bincount(mask.flatten(), minlength=7)[1:]
        assert int(label) == int(counts.argmax()) and counts[label] > 0
    assert data.head_classes["cls"] == list(SHAPE_CLASSES)
    assert data.head_classes["seg"] == ["background", *data.head_classes["cls"]]
