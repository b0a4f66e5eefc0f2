"""Keypoint explanations: peak targets, the pointing game within a radius, GradCAMCallback on a KeypointTask, grids."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from visiondistill.core.adapters.keypoints import KeypointPeakTarget, KeypointSaliencyAdapter, keypoint_disc_masks
from visiondistill.data.keypoints import ShapesKeypoints
from visiondistill.explain import GradCAMCallback, saliency_adapter_for
from visiondistill.explain.keypoints import keypoint_grid, keypoint_teacher_agreement
from visiondistill.explain.metrics import pointing_game_hits
from visiondistill.models.keypoint_models import create_keypoint_model
from visiondistill.tasks import KeypointTask

from ..support.keypoints import SHAPES_ARGS, TINY_STUDENT, TINY_TEACHER


def test_peak_target_explains_one_keypoint_or_the_sum_and_its_gradient_reaches_the_peak():
    heatmaps = torch.zeros(3, 4, 4, requires_grad=True)
    values = torch.zeros(3, 4, 4)
    values[0, 1, 2], values[1, 3, 3], values[2, 0, 0] = 0.9, 0.4, 0.2
    output = heatmaps + values
    assert float(KeypointPeakTarget(1)(output).detach()) == pytest.approx(0.4)
    total = KeypointPeakTarget(3)(output)
    assert float(total.detach()) == pytest.approx(1.5)
    total.backward()
    assert heatmaps.grad.sum() == 3 and heatmaps.grad[0, 1, 2] == 1


def test_pointing_game_hits_within_the_radius_of_the_keypoint():
    keypoints = torch.tensor([[[5.5, 5.5, 2.0], [20.0, 20.0, 2.0]], [[5.5, 5.5, 0.0], [20.0, 20.0, 2.0]]])
    masks = keypoint_disc_masks(keypoints, torch.tensor([20.0, 20.0]), 32, 32, radius=0.1, which=[0, 0])
    assert masks[0, 5, 5] and masks[0, 5, 7] and not masks[0, 5, 8] and not masks[0, 19, 19]  # radius 2 px
    assert not masks[1].any()  # keypoint 0 of image 1 is unlabelled: an empty mask, always a miss
    maps = torch.zeros(2, 32, 32)
    maps[0, 6, 4] = maps[1, 5, 5] = 1.0
    assert pointing_game_hits(maps, masks).tolist() == [True, False]
    both = keypoint_disc_masks(keypoints, torch.tensor([20.0, 20.0]), 32, 32, radius=0.1, which=[2, 2])
    assert both[0, 19, 19] and both[0, 5, 5] and both[1, 19, 19] and not both[1, 5, 5]


def test_adapter_is_registered_and_names_its_categories():
    task = KeypointTask(student=TINY_STUDENT, num_keypoints=4)
    adapter = saliency_adapter_for(task)
    assert isinstance(adapter, KeypointSaliencyAdapter)
    images = torch.zeros(2, 3, 32, 32)
    assert adapter.predict(task.student, images).tolist() == [4, 4]  # K = "all keypoints"
    assert KeypointSaliencyAdapter(keypoint=2).predict(task.student, images).tolist() == [2, 2]
    assert adapter.category_names(task) == ["kp_0", "kp_1", "kp_2", "kp_3", "all keypoints"]
    with pytest.raises(ValueError, match="keypoint 9 does not exist"):
        KeypointSaliencyAdapter(keypoint=9).predict(task.student, images)
    with pytest.raises(ValueError, match="radius"):
        KeypointSaliencyAdapter(radius=0)


def test_gradcam_callback_on_a_distilled_keypoint_task_writes_maps_and_pointing_game(shapes_keypoints_dir, tmp_path):
    teacher = create_keypoint_model(TINY_TEACHER, 4)
    task = KeypointTask(student=TINY_STUDENT, num_keypoints=4)
    task.teacher = teacher.eval().requires_grad_(False)
    callback = GradCAMCallback(every_n_epochs=1, num_samples=4, layers=["head"], save_dir=tmp_path / "saliency")
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=1,
        limit_val_batches=1,
        callbacks=[callback],
    )
    trainer.fit(task, datamodule=ShapesKeypoints(str(shapes_keypoints_dir), **SHAPES_ARGS))
    for key in ("val/saliency/pearson", "val/saliency/pointing_game/teacher", "val/saliency/pointing_game/student"):
        assert key in trainer.callback_metrics
    arrays = np.load(next((tmp_path / "saliency").rglob("maps.npz")))
    assert arrays["student_maps"].shape == (4, 32, 32) and arrays["masks"].shape == (4, 32, 32)
    assert arrays["masks"].any(axis=(1, 2)).all()  # every probe crop has a labelled keypoint to point at
    assert any((tmp_path / "saliency").rglob("grid.png"))


def test_teacher_agreement_and_keypoint_grid():
    torch.manual_seed(0)
    teacher, student = create_keypoint_model(TINY_TEACHER, 4), create_keypoint_model(TINY_STUDENT, 4)
    images = torch.randn(3, 3, 32, 32)
    keypoints = torch.tensor([[[8.0, 8.0, 2.0], [20.0, 10.0, 2.0], [16.0, 25.0, 1.0], [5.0, 16.0, 0.0]]] * 3)
    result = keypoint_teacher_agreement(teacher, student, images, keypoints, torch.full((3,), 20.0))
    assert {"pearson", "topk_iou", "pointing_game_teacher", "pointing_game_student"} <= set(result)
    assert all(np.isfinite(v) for v in result.values())
    one = keypoint_teacher_agreement(teacher, student, images, keypoint=1)
    assert "pointing_game_teacher" not in one
    grid = keypoint_grid(
        images.sigmoid(),
        keypoints,
        [("teacher", keypoints[..., :2] + 1), ("student", keypoints[..., :2] - 1)],
        keypoint_names=["top", "right", "bottom", "left"],
        maps=[torch.rand(3, 8, 8), None],
    )
    assert grid.dtype == np.uint8 and grid.shape[2] == 3 and grid.shape[1] > 2 * 3 * 32
