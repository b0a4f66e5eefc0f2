"""KeypointTask with a real Trainer: training, metrics, flip test, checkpoints, FPD distillation and bad setups."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visiondistill.core.protocol import ProtocolError
from visiondistill.data.keypoints import flip_permutation, gaussian_heatmaps
from visiondistill.distill import AttentionTransfer, HeatmapDistillation
from visiondistill.models.checkpoints import CheckpointError
from visiondistill.models.keypoint_models import KeypointModelSpec, create_keypoint_model
from visiondistill.reporting.loader import load_task_module
from visiondistill.tasks import KeypointTask
from visiondistill.tasks.keypoints import flip_back

from ..support.keypoints import TINY_STUDENT, TINY_TEACHER, shapes, trainer


# -------------------------------------------------------------------------------------------------- model
def test_model_declares_backbone_stages_and_builds_only_up_to_the_chosen_one():
    model = create_keypoint_model(TINY_STUDENT, num_keypoints=4)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4, 8, 8) and model.stride == 4
    assert model.feature_info[-1]["module"] == "backbone.layer3" and not hasattr(model.backbone, "layer4")
    with pytest.raises(ValueError, match="stage 7 does not exist"):
        create_keypoint_model(KeypointModelSpec("test_resnet", stage=7), 4)
    with pytest.raises(ValueError, match="unknown timm backbone 'resnet_nope'"):
        create_keypoint_model(KeypointModelSpec("resnet_nope"), 4)
    with pytest.raises(ValueError, match="configured for 3 keypoints but the task has 4"):
        create_keypoint_model(KeypointModelSpec("test_resnet", num_keypoints=3), 4)


def test_flip_back_undoes_a_mirrored_input_with_swapped_pairs():
    points = np.array([[13.0, 3.0, 2], [29.0, 14.0, 2], [15.0, 27.0, 2], [2.5, 17.0, 2]])
    mirrored = points.copy()
    mirrored[:, 0] = 32 - points[:, 0]
    permutation = flip_permutation([(1, 3)], 4)
    mirrored = mirrored[permutation]
    original = torch.from_numpy(gaussian_heatmaps(points, 8, 4, 1.0))[None]
    of_mirror = torch.from_numpy(gaussian_heatmaps(mirrored, 8, 4, 1.0))[None]
    assert torch.allclose(flip_back(of_mirror, permutation), original, atol=1e-6)


class _MirrorAwareDetector(torch.nn.Module):
    """A perfect keypoint detector for one image: on the image it gives the keypoints' heatmaps, on the mirrored
    image the mirrored keypoints' heatmaps in semantic order (its "right" channel marks the mirrored left point)."""

    def __init__(self, image: torch.Tensor, heatmaps: torch.Tensor, of_mirror: torch.Tensor) -> None:
        super().__init__()
        self.image, self.heatmaps, self.of_mirror = image, heatmaps, of_mirror

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if torch.equal(images, self.image):
            return self.heatmaps
        assert torch.equal(images, self.image.flip(-1)), "the flip test feeds the image and its mirror only"
        return self.of_mirror


def test_flip_test_swaps_left_and_right_heatmaps_before_averaging():
    # top, right, bottom, left (flip pair 1 <-> 3) at asymmetric places of a 32 px input, stride-4 heatmaps
    points = np.array([[13.0, 3.0, 2], [29.0, 14.0, 2], [15.0, 27.0, 2], [2.5, 17.0, 2]])
    mirrored = points.copy()
    mirrored[:, 0] = 32 - points[:, 0]
    heatmaps = torch.from_numpy(gaussian_heatmaps(points, 8, 4, 1.0))[None]
    of_mirror = torch.from_numpy(gaussian_heatmaps(mirrored[[0, 3, 2, 1]], 8, 4, 1.0))[None]
    detector = _MirrorAwareDetector(
        torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)), heatmaps, of_mirror
    )

    with_pairs = KeypointTask(student=TINY_STUDENT, num_keypoints=4, flip_pairs=[(1, 3)])
    averaged = with_pairs.predict_heatmaps(detector.image, model=detector)
    # A perfect detector agrees with itself on the mirror: the average is its own heatmaps, left and right kept apart.
    assert torch.allclose(averaged, heatmaps, atol=1e-6)
    truth = torch.from_numpy(points[:, :2]).float()
    assert torch.allclose(with_pairs.decode(averaged)[0][0], truth, atol=1.0)  # quarter-offset decoding: ~1 px

    # Without the pairs the mirror's "right" channel (the left point) is averaged into "right", and vice versa.
    without_pairs = KeypointTask(student=TINY_STUDENT, num_keypoints=4, flip_pairs=[]).predict_heatmaps(
        detector.image, model=detector
    )
    assert torch.allclose(without_pairs[:, [0, 2]], heatmaps[:, [0, 2]], atol=1e-6)  # unpaired keypoints agree
    swapped_in = 0.5 * (heatmaps[:, [1, 3]] + heatmaps[:, [3, 1]])
    assert torch.allclose(without_pairs[:, [1, 3]], swapped_in, atol=1e-6)
    # Both peaks are halved and equal: one of the pair decodes onto the other's place, some 27 px away.
    assert (with_pairs.decode(without_pairs)[0][0] - truth).abs().max() > 10


# ------------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def teacher_checkpoint(shapes_keypoints_dir, tmp_path_factory):
    """A teacher trained for two epochs on the tiny shapes set, saved as a Lightning checkpoint."""
    folder = tmp_path_factory.mktemp("teacher")
    task = KeypointTask(student=TINY_TEACHER, num_keypoints=4, lr=3e-3)
    fit = trainer(folder, max_epochs=2)
    fit.fit(task, datamodule=shapes(shapes_keypoints_dir))
    path = folder / "teacher.ckpt"
    fit.save_checkpoint(path)
    assert task.keypoint_names == ["top", "right", "bottom", "left"] and task.flip_pairs == [(1, 3)]
    return path, fit.callback_metrics


def test_training_logs_pck_and_ap_and_adopts_the_datamodule_names(teacher_checkpoint):
    _, metrics = teacher_checkpoint
    for key in ("val/pck@0.05", "val/pck@0.1", "val/ap", "val/loss", "train/loss_epoch"):
        assert key in metrics and torch.isfinite(metrics[key])
    assert 0 <= float(metrics["val/pck@0.05"]) <= float(metrics["val/pck@0.1"]) <= 1


def test_checkpoint_rebuilds_the_network_and_test_runs(teacher_checkpoint, shapes_keypoints_dir, tmp_path):
    path, _ = teacher_checkpoint
    module = load_task_module(path)
    model, hparams = module.student, module.hparams
    assert hparams["num_keypoints"] == 4 and hparams["student"]["stage"] == -2
    task = KeypointTask(student=TINY_STUDENT, teacher={"checkpoint": str(path)}, num_keypoints=4)
    for key, value in model.state_dict().items():  # the teacher is read back from the checkpoint alone
        assert torch.equal(task.teacher.state_dict()[key], value)
    results = trainer(tmp_path).test(task, datamodule=shapes(shapes_keypoints_dir))
    assert {"test/pck@0.05", "test/pck@0.1", "test/ap"} <= set(results[0])
    with pytest.raises(CheckpointError, match="predicts 4 keypoints but the task has 5"):
        KeypointTask(student=TINY_STUDENT, teacher={"checkpoint": str(path)}, num_keypoints=5)


def test_heatmap_distillation_trains_the_student_with_a_frozen_teacher(
    teacher_checkpoint, shapes_keypoints_dir, tmp_path
):
    path, _ = teacher_checkpoint
    task = KeypointTask(student=TINY_STUDENT, teacher={"checkpoint": str(path)}, num_keypoints=4, task_weight=0.0)
    teacher_before = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in task.student.state_dict().items()}
    callbacks = [
        HeatmapDistillation(alpha=0.5),
        AttentionTransfer(student_layers=[-1], teacher_layers=[-1], weight=10.0),
    ]
    fit = trainer(tmp_path, callbacks=callbacks, limit_train_batches=2, limit_val_batches=1)
    fit.fit(task, datamodule=shapes(shapes_keypoints_dir))
    assert "train/distill/heatmap_kd_epoch" in fit.callback_metrics
    assert "train/distill/attention_transfer_epoch" in fit.callback_metrics
    assert all(torch.equal(teacher_before[k], v) for k, v in task.teacher.state_dict().items())
    assert any(not torch.equal(student_before[k], v) for k, v in task.student.state_dict().items())


def test_heatmap_distillation_term_is_fpd_with_visibility_weights():
    student, teacher, target = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    weights = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    batch = {"image": torch.zeros(2, 3, 16, 16), "target": target, "target_weight": weights}
    w = weights[:, :, None, None].numpy()
    s, t, g = student.numpy(), teacher.numpy(), target.numpy()
    expected = 0.7 * (w * (s - g) ** 2).mean() + 0.3 * (w * (s - t) ** 2).mean()
    term = HeatmapDistillation(alpha=0.3).compute_loss(None, batch, student, teacher)
    assert float(term) == pytest.approx(float(expected), abs=1e-6)
    pure = HeatmapDistillation(use_ground_truth=False, use_weights=False).compute_loss(None, batch, student, teacher)
    assert float(pure) == pytest.approx(float(((s - t) ** 2).mean()), abs=1e-6)
    with pytest.raises(ProtocolError, match="no target heatmaps"):
        HeatmapDistillation().compute_loss(None, {"image": batch["image"]}, student, teacher)
    with pytest.raises(ValueError, match="alpha"):
        HeatmapDistillation(alpha=2.0)


# --------------------------------------------------------------------------------------------- bad setups
def test_bad_task_arguments_fail_early_with_the_fix():
    with pytest.raises(ValueError, match=r"flip pair \[1, 5\] names keypoint\(s\) \[5\] that do not exist"):
        KeypointTask(student=TINY_STUDENT, num_keypoints=4, flip_pairs=[[1, 5]])
    with pytest.raises(ValueError, match="oks_sigmas needs 4"):
        KeypointTask(student=TINY_STUDENT, num_keypoints=4, oks_sigmas=[0.1, 0.1])
    with pytest.raises(ValueError, match="decoding must be 'quarter' or 'dark'"):
        KeypointTask(student=TINY_STUDENT, num_keypoints=4, decoding="argmax")
    with pytest.raises(ValueError, match="keypoint_names has 2 names"):
        KeypointTask(student=TINY_STUDENT, num_keypoints=4, keypoint_names=["a", "b"])
    with pytest.raises(ValueError, match="teacher heatmaps have stride 8 but the student's have 4"):
        KeypointTask(student=TINY_STUDENT, teacher=KeypointModelSpec("test_resnet", stage=-2, deconv_channels=[8]))


def test_data_that_does_not_fit_the_model_is_refused_at_setup(shapes_keypoints_dir, tmp_path):
    task = KeypointTask(student=TINY_STUDENT, num_keypoints=5)
    with pytest.raises(ValueError, match="the data has 4 keypoints but the model is built for 5"):
        trainer(tmp_path).fit(task, datamodule=shapes(shapes_keypoints_dir))
    task = KeypointTask(student=TINY_STUDENT, num_keypoints=4)
    with pytest.raises(ValueError, match="heatmap_stride: 4"):
        trainer(tmp_path).fit(task, datamodule=shapes(shapes_keypoints_dir, heatmap_stride=8))


def test_predict_returns_crop_and_image_keypoints(teacher_checkpoint, shapes_keypoints_dir, tmp_path):
    path, _ = teacher_checkpoint
    task = KeypointTask.load_from_checkpoint(path)
    module = shapes(shapes_keypoints_dir)
    outputs = trainer(tmp_path).predict(task, datamodule=module)
    first = outputs[0]
    assert first["keypoints"].shape == (8, 4, 2) and first["scores"].shape == (8, 4)
    batch = next(iter(module.predict_dataloader()))
    to_image = batch["to_image"]
    expected = first["keypoints"] @ to_image[:, :, :2].transpose(1, 2) + to_image[:, None, :, 2]
    assert torch.allclose(first["image_keypoints"], expected, atol=1e-4)


def test_dark_decoding_validates_with_the_data_sigma(shapes_keypoints_dir, tmp_path):
    task = KeypointTask(student=TINY_STUDENT, num_keypoints=4, decoding="dark", flip_test=False)
    results = trainer(tmp_path).validate(task, datamodule=shapes(shapes_keypoints_dir, sigma=1.5))
    assert task.decoding_sigma == 1.5 and {"val/pck@0.05", "val/ap"} <= set(results[0])
