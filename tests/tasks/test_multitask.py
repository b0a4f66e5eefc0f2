"""MultiTaskModule: one backbone, a classification and a segmentation head, each distilled from its own teacher."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback

from visiondistill.core.teachers import head_output
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
