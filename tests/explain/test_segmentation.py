"""Grad-CAM for segmentation: class-over-mask targets, the adapter, and GradCAMCallback on a SegmentationTask."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from visiondistill.explain import ClassRegionTarget, GradCAMCallback, SegmentationSaliencyAdapter, saliency_adapter_for
from visiondistill.tasks import SegmentationTask

from ..support.segmentation import TINY_STUDENT, TINY_TEACHER, square_masks


def test_target_sums_the_class_logits_over_the_region():
    output = torch.randn(3, 4, 4)
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[1:3, 1:3] = True
    assert torch.isclose(ClassRegionTarget(2, region)(output), output[2, 1:3, 1:3].sum())
    assert torch.isclose(ClassRegionTarget(1, None)(output), output[1].sum())


def test_adapter_explains_the_dominant_foreground_class_and_points_at_its_mask():
    adapter = SegmentationSaliencyAdapter()
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[0, :2, :2], masks[0, 4:, 4:] = 1, 2  # class 2 covers more pixels
    masks[1, 0, 0] = 255  # no foreground at all
    batch = (torch.zeros(2, 3, 8, 8), masks)
    assert adapter.ground_truth(batch).tolist() == [2, 0]
    adapter.targets(torch.tensor([1, 2]), batch)
    pointing = adapter.masks(batch, 8, 8)
    assert torch.equal(pointing[0], masks[0] == 1)
    assert not pointing[1].any()


def test_task_selects_the_segmentation_adapter():
    task = SegmentationTask(student=TINY_STUDENT, num_classes=3)
    assert isinstance(saliency_adapter_for(task), SegmentationSaliencyAdapter)


def test_gradcam_callback_logs_agreement_and_pointing_game(tmp_path, trainer_kwargs: dict):
    loader = DataLoader(square_masks(8), batch_size=4)
    task = SegmentationTask(student=TINY_STUDENT, teacher=TINY_TEACHER, num_classes=3)
    callback = GradCAMCallback(num_samples=4, layers=["decoder"], target="ground_truth", save_dir=tmp_path / "cams")
    trainer = pl.Trainer(**{**trainer_kwargs, "callbacks": [callback]}, limit_train_batches=1, limit_val_batches=1)
    teacher_before = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    trainer.fit(task, loader, loader)
    metrics = trainer.callback_metrics
    for key in ("val/saliency/pearson", "val/saliency/pointing_game/teacher", "val/saliency/pointing_game/student"):
        assert key in metrics
    saved = np.load(tmp_path / "cams" / "epoch_000" / "maps.npz")
    assert saved["student_maps"].shape == (4, 32, 32) and saved["masks"].shape == (4, 32, 32)
    assert (tmp_path / "cams" / "epoch_000" / "grid.png").is_file()
    assert all(torch.equal(v, teacher_before[k]) for k, v in task.teacher.state_dict().items())
