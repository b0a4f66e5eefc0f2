"""The dense-prediction distillation callbacks, each with a real Trainer; the teacher never changes."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from visiondistill.distill import (
    AttentionTransfer,
    ChannelWiseDistillation,
    DistillationCallback,
    FeatureHint,
    PairwiseSimilarity,
    PixelwiseDistillation,
    losses,
)
from visiondistill.tasks import SegmentationTask

from ..support.segmentation import TINY_STUDENT, TINY_TEACHER


def fit_with(callback: DistillationCallback, loader: DataLoader, trainer_kwargs: dict) -> SegmentationTask:
    task = SegmentationTask(student=TINY_STUDENT, teacher=TINY_TEACHER, num_classes=3)
    teacher_before = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in task.student.state_dict().items()}
    trainer = pl.Trainer(**trainer_kwargs, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(task, loader)
    assert f"train/distill/{callback.name}_epoch" in trainer.callback_metrics or any(
        key.startswith(f"train/distill/{callback.name}") for key in trainer.callback_metrics
    )
    for key, value in task.teacher.state_dict().items():  # weights and BatchNorm statistics alike
        assert torch.equal(value, teacher_before[key]), f"teacher {key} changed"
    assert not task.teacher.training and not any(p.requires_grad for p in task.teacher.parameters())
    assert any(not torch.equal(v, student_before[k]) for k, v in task.student.state_dict().items())
    return task


@pytest.mark.parametrize(
    "make",
    [
        lambda: PixelwiseDistillation(temperature=2.0),
        lambda: ChannelWiseDistillation(source="logits"),
        lambda: ChannelWiseDistillation(source="features", student_layer=-1, teacher_layer=-1),
        lambda: PairwiseSimilarity(student_layer="decoder", teacher_layer="decoder", pool_size=4),
        lambda: AttentionTransfer(student_layers=[-2, -1], teacher_layers=[-2, -1]),
        lambda: FeatureHint(student_layer=-2, teacher_layer=-2),
    ],
    ids=["pixelwise", "cwd_logits", "cwd_features", "pairwise", "attention", "hint"],
)
def test_callback_trains_the_student_and_not_the_teacher(make, seg_loader: DataLoader, trainer_kwargs: dict):
    callback = make()
    task = fit_with(callback, seg_loader, {**trainer_kwargs, "callbacks": [callback]})
    if isinstance(callback, ChannelWiseDistillation) and callback.source == "features":
        assert "cwd" in task.distill_adapters  # the learned 1×1 connector, optimised with the student


def test_pixelwise_term_leaves_out_ignored_pixels():
    callback = PixelwiseDistillation(temperature=1.0)
    student, teacher = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[:, :2] = 255
    module = type("M", (), {"ignore_index": 255})()
    term = callback.compute_loss(module, (None, masks), student, teacher)
    expected = losses.pixelwise_kd_loss(student[:, :, 2:], teacher[:, :, 2:])
    assert float(term) == pytest.approx(float(expected), abs=1e-6)


def test_pixelwise_class_weights_weight_each_pixel_by_the_teachers_class():
    callback = PixelwiseDistillation(temperature=2.0, class_weights=[1.0, 10.0, 0.0])
    student, teacher = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    module = type("M", (), {})()
    term = float(callback.compute_loss(module, None, student, teacher))
    per_pixel = (teacher / 2).softmax(1) * ((teacher / 2).log_softmax(1) - (student / 2).log_softmax(1))
    per_pixel = 4 * per_pixel.sum(1)  # T² · KL, (N, H, W)
    weights = torch.tensor([1.0, 10.0, 0.0])[teacher.argmax(1)]
    assert term == pytest.approx(float((weights * per_pixel).sum() / weights.sum()), rel=1e-5)
    assert term != pytest.approx(float(per_pixel.mean()), rel=1e-3)  # the plain mean differs


def test_pairwise_pools_to_a_bounded_grid():
    callback = PairwiseSimilarity(pool_size=4)
    s, t = torch.randn(2, 8, 16, 16), torch.randn(2, 5, 8, 8)
    assert callback.grid(s, t) == (4, 4)
    assert PairwiseSimilarity(pool_size=None).grid(s, t) == (8, 8)


def test_bad_arguments_fail_in_init():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        PixelwiseDistillation(temperature=0)
    with pytest.raises(ValueError, match="source must be 'logits' or 'features'"):
        ChannelWiseDistillation(source="pixels")
    with pytest.raises(ValueError, match="pool_size must be >= 1"):
        PairwiseSimilarity(pool_size=0)
