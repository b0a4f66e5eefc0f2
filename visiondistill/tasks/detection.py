"""Object detection: an FCOS student on a timm backbone distilled from an FCOS teacher."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision
from typing_extensions import override

from visiondistill.core.adapters.detection import DetectionSaliencyAdapter
from visiondistill.core.errors import ConfigError
from visiondistill.models.detectors import DetectorOutput, DetectorSpec, create_detector
from visiondistill.tasks.base import DistillationTask

# DetectionTask checks label values in `on_before_batch_transfer`; Lightning notes on every fit with a datamodule that
# the module's hook is the one used, which is the intent (our datamodules do not define it).
warnings.filterwarnings(
    "ignore", message=r"You have overridden `on_before_batch_transfer` in `LightningModule` but have passed in a"
)

__all__ = ["DetectionTask", "box_map_vs_teacher", "detection_map"]


def detection_map() -> MeanAveragePrecision:
    """COCO box mAP (pycocotools backend) with per-class values: the metric of validation, test and the demo."""
    return MeanAveragePrecision(iou_type="bbox", class_metrics=True, backend="pycocotools")


def box_map_vs_teacher(
    student_detections: Sequence[Mapping[str, Tensor]],
    teacher_detections: Sequence[Mapping[str, Tensor]],
    score_threshold: float = 0.5,
) -> float:
    """The student's box mAP@50 with the teacher's detections (score at least ``score_threshold``) as ground truth."""
    pseudo = [
        {"boxes": d["boxes"][d["scores"] >= score_threshold], "labels": d["labels"][d["scores"] >= score_threshold]}
        for d in teacher_detections
    ]
    metric = detection_map()
    metric.update(list(student_detections), pseudo)
    return float(metric.compute()["map_50"])


class DetectionTask(DistillationTask):
    """Object detection with an optional frozen teacher (FCOS detectors, `visiondistill.models.create_detector`).

    Batches are ``(images, targets)``: images ``N×C×H×W`` of one size and one dict per image with ``boxes`` (``M×4``
    float xyxy pixels) and ``labels`` (``M`` int64 in ``0 … num_classes − 1``), as `visiondistill.data.CocoDetection`
    gives them. The student's output is a `DetectorOutput` (FPN features, per-location head outputs, points); the
    task loss is torchvision's FCOS loss (focal classification + GIoU box + centre-ness BCE, logged as
    ``train/loss_cls``, ``train/loss_box``, ``train/loss_ctr``). Validation and test log ``<stage>/map`` (COCO mAP
    over IoU 0.50:0.95), ``<stage>/map_50``, ``<stage>/map_75``, ``<stage>/map/<class>`` and ``<stage>/loss``.
    Explanations use the ``"detection"`` saliency adapter (`visiondistill.explain.DetectionSaliencyAdapter`).

    Args:
        student: Spec of the detector to train, or a mapping of its fields.
        teacher: Spec of the frozen teacher, usually with ``checkpoint`` set; ``None`` for no teacher.
        num_classes: Number of object classes (no background class); checked against the datamodule at setup.
        class_names: Class names for per-class metrics; read from the datamodule when ``None``.
        **kwargs: The optimiser arguments of `DistillationTask`: ``optimizer``, ``lr``, ``weight_decay``,
            ``warmup_epochs``, ``scheduler``.

    Raises:
        ValueError: On bad class counts, or when teacher and student disagree on input channels.
        CheckpointError: When the teacher checkpoint is missing or does not fit (e.g. other classes).

    Example::

        >>> task = DetectionTask(student={"backbone": "test_resnet", "fpn_channels": 32}, num_classes=3)
        >>> task(torch.zeros(2, 3, 64, 64)).cls_logits.shape
        torch.Size([2, 336, 3])
    """

    saliency_adapter = DetectionSaliencyAdapter
    spec_class = DetectorSpec
    model_factory = staticmethod(create_detector)

    def __init__(
        self,
        student: DetectorSpec | Mapping[str, Any],
        teacher: DetectorSpec | Mapping[str, Any] | None = None,
        num_classes: int = 6,
        class_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1 (object classes, no background), got {num_classes}")
        super().__init__(student, teacher, num_outputs=num_classes, output_names=class_names, **kwargs)
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.val_map, self.test_map = detection_map(), detection_map()

    @override
    def setup(self, stage: str) -> None:
        self.check_datamodule()

    def _targets(self, batch: Any) -> list[dict[str, Tensor]]:
        targets = batch[1] if isinstance(batch, list | tuple) and len(batch) > 1 else None
        if not isinstance(targets, list | tuple) or not all(isinstance(t, Mapping) for t in targets):
            raise TypeError(
                "detection batches must be (images, targets) with one {'boxes', 'labels'} dict per image; use "
                "visiondistill.data.CocoDetection or its detection_collate"
            )
        # Under a Trainer the label values were checked on the host copy of the batch (`on_before_batch_transfer`):
        # reading them here, on the device, would wait for the accelerator at every step.
        if self._trainer is None:
            self._check_labels(targets)
        return list(targets)

    def _check_labels(self, targets: Iterable[Mapping[str, Tensor]]) -> None:
        for target in targets:
            labels = target["labels"]
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ConfigError(
                    f"a target has labels {sorted(set(labels.tolist()))} but the model has {self.num_classes} "
                    f"classes (labels 0..{self.num_classes - 1}); set model.init_args.num_classes"
                )

    @override
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # The label check reads values: on the host copy it costs nothing, on the device it would wait for the
        # accelerator at every step.
        targets = batch[1] if isinstance(batch, list | tuple) and len(batch) > 1 else None
        if isinstance(targets, list | tuple) and all(isinstance(t, Mapping) and "labels" in t for t in targets):
            self._check_labels(targets)
        return batch

    def _loss(self, output: DetectorOutput, batch: Any, stage: str) -> Tensor:
        terms = self.student.compute_loss(output, self._targets(batch))
        batch_size = output.cls_logits.shape[0]
        if stage == "train":
            for key, name in (("classification", "cls"), ("bbox_regression", "box"), ("bbox_ctrness", "ctr")):
                self.log(f"train/loss_{name}", terms[key].detach(), on_step=False, on_epoch=True, batch_size=batch_size)
        return sum(terms.values())

    @override
    def task_loss(self, student_out: DetectorOutput, batch: Any) -> Tensor:
        return self._loss(student_out, batch, "train")

    @override
    def evaluate_batch(self, batch: Any, stage: str) -> Tensor:
        images = batch[0]
        output = self.student(images)
        loss = self._loss(output, batch, stage)
        detections = self.student.postprocess(output)
        targets = [{"boxes": t["boxes"], "labels": t["labels"].long()} for t in self._targets(batch)]
        (self.val_map if stage == "val" else self.test_map).update(detections, targets)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True, batch_size=images.shape[0])
        return loss

    @override
    def log_epoch_metrics(self, stage: str) -> None:
        metric = self.val_map if stage == "val" else self.test_map
        result = metric.compute()  # synchronised across processes by torchmetrics
        metric.reset()
        self.log(f"{stage}/map", result["map"], prog_bar=stage == "val")
        self.log(f"{stage}/map_50", result["map_50"])
        self.log(f"{stage}/map_75", result["map_75"])
        per_class = result["map_per_class"].flatten()
        classes = result["classes"].flatten().tolist()
        for label, value in zip(classes, per_class, strict=False):
            if 0 <= label < len(self.class_names):
                self.log(f"{stage}/map/{self.class_names[label]}", value)

    @override
    @torch.no_grad()
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Tensor]]:
        images = batch[0] if isinstance(batch, list | tuple) else batch
        return self.student.postprocess(self.student(images))
