"""DetectionTask with the detection distillation callbacks and explanations, on a real Trainer and tiny data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from visiondistill.core.adapters.detection import BoxScoreTarget, DetectionScores
from visiondistill.data.detection import CocoDetection
from visiondistill.distill import (
    DetectionLogitDistillation,
    FeatureImitation,
    FPNChannelWiseDistillation,
    SaliencyAlignment,
    ShapeMismatchError,
)
from visiondistill.explain import DetectionSaliencyAdapter, GradCAMCallback, saliency_adapter_for
from visiondistill.explain.detection import detection_teacher_agreement
from visiondistill.models.detectors import create_detector
from visiondistill.reporting.loader import load_task_module
from visiondistill.tasks import DetectionTask
from visiondistill.tasks.detection import box_map_vs_teacher

from ..support.detection import TINY_STUDENT, TINY_TEACHER, square_split


@pytest.fixture
def datamodule(coco_root: Path) -> CocoDetection:
    return CocoDetection(str(coco_root), image_size=64, batch_size=4, num_workers=0)


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A teacher trained for two epochs on the squares (once per module), checkpointed on val/map."""
    root = tmp_path_factory.mktemp("teacher")
    square_split(root / "coco", "train", 16, seed=0)
    square_split(root / "coco", "val", 8, seed=1)
    datamodule = CocoDetection(str(root / "coco"), image_size=64, batch_size=4, num_workers=0)
    teacher = DetectionTask(student=TINY_TEACHER, num_classes=2, lr=5e-3)
    checkpoint = ModelCheckpoint(dirpath=root / "run", monitor="val/map", mode="max", filename="best")
    trainer = pl.Trainer(
        default_root_dir=root / "run",
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(teacher, datamodule)
    return str(root / "run" / "best.ckpt")


def test_teacher_run_checkpoints_the_best_map(teacher_checkpoint: str):
    module = load_task_module(teacher_checkpoint)
    model, hparams = module.student, module.hparams
    assert hparams["num_classes"] == 2 and model.fpn.inner_blocks[0].out_channels == TINY_TEACHER.fpn_channels


def test_fit_logs_detection_metrics(trainer_kwargs: dict, datamodule):
    task = DetectionTask(student=TINY_STUDENT, num_classes=2)
    trainer = pl.Trainer(**trainer_kwargs, limit_train_batches=2)
    trainer.fit(task, datamodule)
    metrics = trainer.callback_metrics
    for key in (
        "val/map",
        "val/map_50",
        "val/map_75",
        "val/loss",
        "train/loss_cls",
        "train/loss_box",
        "train/loss_ctr",
    ):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert task.class_names == ["bright", "dark"]  # adopted from the data
    assert {"val/map/bright", "val/map/dark"} & set(metrics)
    trainer.test(task, datamodule)
    assert "test/map" in trainer.callback_metrics
    predictions = trainer.predict(task, datamodule)
    assert set(predictions[0][0]) == {"boxes", "scores", "labels"}


def test_class_count_mismatch_with_the_data_is_refused(trainer_kwargs: dict, datamodule):
    datamodule.setup("fit")
    task = DetectionTask(student=TINY_STUDENT, num_classes=3)
    with pytest.raises(ValueError, match="the data has 2 classes but the model is built for 3"):
        pl.Trainer(**trainer_kwargs).fit(task, datamodule)


def test_labels_outside_the_model_classes_are_refused():
    task = DetectionTask(student=TINY_STUDENT, num_classes=2)
    images = torch.zeros(1, 3, 64, 64)
    bad = (images, [{"boxes": torch.tensor([[0.0, 0.0, 9.0, 9.0]]), "labels": torch.tensor([4])}])
    with pytest.raises(ValueError, match=r"labels \[4\] but the model has 2 classes"):
        task.task_loss(task(images), bad)


def test_distillation_callbacks_train_with_connectors(trainer_kwargs: dict, datamodule, teacher_checkpoint: str):
    teacher = dataclasses.replace(TINY_TEACHER, checkpoint=teacher_checkpoint)
    task = DetectionTask(student=TINY_STUDENT, teacher=teacher, num_classes=2)
    frozen = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    callbacks = [
        FeatureImitation(levels=[0, 1], gamma=0.1, weight=1e-3),
        FPNChannelWiseDistillation(tau=4.0),
        DetectionLogitDistillation(temperature=2.0),
    ]
    trainer = pl.Trainer(**trainer_kwargs, callbacks=callbacks, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(task, datamodule)
    metrics = trainer.callback_metrics
    for name in ("fgd", "cwd_fpn", "det_kd"):
        value = metrics[f"train/distill/{name}"]
        assert torch.isfinite(value) and float(value) > 0
    # one 1×1 connector per distilled level, from the student's 16 FPN channels to the teacher's 32
    assert len(task.distill_adapters["fgd"]) == 2 and len(task.distill_adapters["cwd_fpn"]) == 3
    assert task.distill_adapters["fgd"][0].conv.weight.shape == (32, 16, 1, 1)
    assert all(torch.equal(v, task.teacher.state_dict()[k]) for k, v in frozen.items())


def test_other_strides_fail_at_setup(trainer_kwargs: dict, datamodule):
    task = DetectionTask(
        student=TINY_STUDENT, teacher=dataclasses.replace(TINY_TEACHER, out_indices=[2, 3, 4]), num_classes=2
    )
    for callback, message in (
        (FeatureImitation(), r"FPN level 0 is \(1, 16, 16, 16\) in the student and \(1, 32, 8, 8\) in the teacher"),
        (DetectionLogitDistillation(), r"student logits \(1, 336, 2\) and teacher logits \(1, 84, 2\) differ"),
    ):
        with pytest.raises(ShapeMismatchError, match=message):
            pl.Trainer(**trainer_kwargs, callbacks=[callback]).fit(task, datamodule)


def test_bad_callback_arguments():
    with pytest.raises(ValueError, match="levels must be 'all' or a non-empty list"):
        FeatureImitation(levels=[])
    with pytest.raises(ValueError, match="weighting must be"):
        DetectionLogitDistillation(weighting="max")
    with pytest.raises(ValueError, match="tau must be > 0"):
        FPNChannelWiseDistillation(tau=0)


def test_box_score_target_rewards_overlap_and_score():
    out = torch.zeros(3, 5 + 2, requires_grad=True)
    values = out.detach().clone()
    values[0, :4] = torch.tensor([0.0, 0.0, 10.0, 10.0])  # the matching prediction
    values[1, :4] = torch.tensor([0.0, 0.0, 5.0, 10.0])  # IoU 0.5, not above the threshold
    values[0, 6] = 2.0  # class 1 logit
    target = BoxScoreTarget(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([1]))
    expected = 1.0 + float(torch.sqrt(torch.sigmoid(torch.tensor(2.0)) * 0.5))
    assert float(target(values)) == pytest.approx(expected)
    assert float(BoxScoreTarget(torch.zeros(0, 4), torch.zeros(0))(values)) == 0.0
    far = BoxScoreTarget(torch.tensor([[40.0, 40.0, 50.0, 50.0]]), torch.tensor([0]))
    assert float(far(values)) == 0.0


@pytest.mark.parametrize("method", ["gradcam", "eigencam"])
def test_gradcam_callback_explains_detections(
    tmp_path: Path, trainer_kwargs: dict, datamodule, teacher_checkpoint: str, method: str
):
    teacher = dataclasses.replace(TINY_TEACHER, checkpoint=teacher_checkpoint)
    task = DetectionTask(student=TINY_STUDENT, teacher=teacher, num_classes=2)
    assert isinstance(saliency_adapter_for(task), DetectionSaliencyAdapter)
    callback = GradCAMCallback(method=method, num_samples=4, layers=["fpn.layer_blocks.0"], save_dir=tmp_path / "sal")
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[callback], limit_train_batches=1)
    trainer.fit(task, datamodule)
    metrics = trainer.callback_metrics
    for key in ("val/saliency/pearson", "val/saliency/pointing_game/teacher", "val/saliency/pointing_game/student"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    arrays = np.load(tmp_path / "sal" / "epoch_000" / "maps.npz")
    assert arrays["teacher_maps"].shape == (4, 64, 64) and arrays["masks"].shape == (4, 64, 64)
    assert (tmp_path / "sal" / "epoch_000" / "grid.png").is_file()


def test_gradcam_maps_follow_the_explained_box():
    torch.manual_seed(0)
    detector = create_detector(TINY_STUDENT, num_classes=2).eval()
    adapter = DetectionSaliencyAdapter(boxes="true")
    images = torch.randn(2, 3, 64, 64)
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 24.0, 24.0]]), "labels": torch.tensor([0])},
        {"boxes": torch.tensor([[36.0, 36.0, 60.0, 60.0]]), "labels": torch.tensor([1])},
    ]
    batch = (images, targets)
    explained = adapter.ground_truth(batch)
    assert explained.tolist() == [0, 1]
    model = adapter.cam_model(detector)
    assert isinstance(model, DetectionScores) and model(images).shape == (2, 336, 5 + 2)
    masks = adapter.masks(batch, 64, 64)
    assert masks[0, 10, 10] and not masks[0, 40, 40] and masks[1, 40, 40]
    # an untrained detector's prediction nearest a box: the gradient of its score reaches the box's region
    with torch.enable_grad():
        out = model(images.requires_grad_(True))
        target = adapter.targets(explained, batch)[0]
        nearest = BoxScoreTarget(target.boxes, target.labels, iou_threshold=0.0)(out[0])
        (gradient,) = torch.autograd.grad(nearest, images)
    assert gradient[0].abs().sum() > 0 and gradient[1].abs().sum() == 0


def test_teacher_agreement_and_grid(tmp_path: Path):
    torch.manual_seed(0)
    teacher = create_detector(TINY_TEACHER, num_classes=2)
    student = create_detector(TINY_STUDENT, num_classes=2)
    images = torch.randn(3, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([i % 2])} for i in range(3)]
    result, extras = detection_teacher_agreement(teacher, student, images, targets, method="eigencam")
    for key in ("pearson", "topk_iou", "pointing_game_teacher", "pointing_game_student"):
        assert key in result and np.isfinite(result[key])
    assert extras["maps"]["teacher"].shape == (3, 64, 64)
    box_map = box_map_vs_teacher(extras["student"], extras["teacher"])
    assert box_map == -1.0 or 0.0 <= box_map <= 1.0  # torchmetrics gives -1 when the teacher found no box
    # the teacher's own detections match themselves (when it finds anything above the threshold)
    if any(len(d["scores"]) and float(d["scores"].max()) >= 0.5 for d in extras["teacher"]):
        assert box_map_vs_teacher(extras["teacher"], extras["teacher"]) == pytest.approx(1.0)
    # a student identical to the teacher agrees perfectly
    same, _ = detection_teacher_agreement(teacher, teacher, images, targets, method="eigencam")
    assert same["pearson"] == pytest.approx(1.0)


def test_adapter_draws_this_rounds_predictions_only():
    torch.manual_seed(0)
    detector = create_detector(TINY_STUDENT, num_classes=2).eval()
    adapter = DetectionSaliencyAdapter(score_threshold=0.0)
    images = torch.randn(2, 3, 64, 64)
    batch = (images, [{"boxes": torch.tensor([[4.0, 4.0, 24.0, 24.0]]), "labels": torch.tensor([0])}] * 2)
    for _ in range(2):  # two probe rounds with the student only (no teacher)
        adapter.targets(adapter.predict(adapter.cam_model(detector), images), batch)
    assert len(adapter.history) == 1
    adapter.predict(detector, images)  # a new round: student, then teacher
    adapter.predict(detector, images)
    assert len(adapter.history) == 2
    drawn = adapter.annotate(torch.zeros(2, 3, 64, 64), batch)
    assert drawn.shape == (2, 3, 64, 64)
    # the true box's outline is green, drawn first (predictions may be drawn over it)
    assert float(drawn[0, 1, 4, 4:24].max()) > 0.5 and float(drawn[0, 1, 10, 10]) == 0.0


class _Spy(pl.Callback):
    def __init__(self) -> None:
        self.norms: dict[str, float] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.norms = {n: float(p.grad.norm()) for n, p in pl_module.named_parameters() if p.grad is not None}


class _TermOnly(DetectionTask):
    """The detection losses switched off: every gradient comes from the distillation terms."""

    def task_loss(self, student_out, batch):
        return student_out.cls_logits.sum() * 0.0


def test_saliency_alignment_gradients_reach_the_student(coco_root, tmp_path, teacher_checkpoint: str):
    torch.manual_seed(0)
    # The box-score target counts a teacher detection only where the student predicts a box overlapping it
    # (IoU > 0.5), so an untrained student gets no signal: start the student as a perturbed copy of the teacher.
    # (An untrained detector predicts zero-size boxes, hence the trained teacher.)
    teacher = dataclasses.replace(TINY_TEACHER, checkpoint=teacher_checkpoint)
    task = _TermOnly(student=TINY_TEACHER, teacher=teacher, num_classes=2)
    with torch.no_grad():
        task.student.load_state_dict(task.teacher.state_dict())
        for parameter in task.student.backbone.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    spy = _Spy()
    # The last backbone stage feeds every FPN level (one level alone sees only its own predictions' gradients).
    callback = SaliencyAlignment(student_layer="backbone.layer3", teacher_layer="backbone.layer3")
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[callback, spy],
    )
    trainer.fit(task, CocoDetection(str(coco_root), image_size=64, batch_size=4, num_workers=0))
    backbone = [v for k, v in spy.norms.items() if k.startswith("student.backbone.")]
    assert backbone and max(backbone) > 0
    assert not any(k.startswith("teacher.") for k in spy.norms)
    assert torch.isfinite(trainer.callback_metrics["train/distill/saliency_alignment_step"])
