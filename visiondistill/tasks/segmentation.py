"""Semantic segmentation: an smp student distilled from an smp teacher."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassF1Score, MulticlassJaccardIndex
from typing_extensions import override

from visiondistill.core.adapters.segmentation import SegmentationSaliencyAdapter
from visiondistill.core.errors import ConfigError
from visiondistill.models.segmenters import SegmenterSpec, create_segmenter
from visiondistill.tasks.base import DistillationTask

SegmentationLoss = Literal["ce", "dice", "ce+dice"]
_LOSSES = ("ce", "dice", "ce+dice")


class SegmentationTask(DistillationTask):
    """Semantic segmentation with an optional frozen teacher (segmentation-models-pytorch networks).

    Batches are ``(images, masks)`` with masks ``N×H×W`` of class indices (``ignore_index`` on unlabelled pixels);
    the student's output is the logits ``N×K×H×W``. Validation and test log ``<stage>/miou`` (mean of the per-class
    IoU), ``<stage>/iou/<class>``, ``<stage>/dice`` (mean per-class Dice, i.e. pixel F1) and ``<stage>/loss``.
    Explanations use the ``"segmentation"`` saliency adapter (`visiondistill.explain.SegmentationSaliencyAdapter`).

    Args:
        student: Spec of the network to train (smp architecture and encoder), or a mapping of its fields.
        teacher: Spec of the frozen teacher, usually with ``checkpoint`` set; ``None`` for no teacher.
        num_classes: Number of classes, background included; checked against the datamodule at setup.
        class_names: Class names for per-class metrics; read from the datamodule when ``None``.
        loss: ``"ce"`` (cross-entropy), ``"dice"`` (smp's multiclass Dice loss) or ``"ce+dice"``.
        dice_weight: Weight of the Dice term in ``"ce+dice"``.
        class_weights: Per-class weights of the cross-entropy (e.g. to counter heavy imbalance).
        ignore_index: Mask value of pixels left out of losses and metrics; ``None`` for none.
        **kwargs: The optimiser arguments of `DistillationTask`: ``optimizer``, ``lr``, ``weight_decay``,
            ``warmup_epochs``, ``scheduler``.

    Raises:
        ValueError: On an unknown loss, bad class counts or weights, or when teacher and student disagree on
            classes or input channels.
        CheckpointError: When the teacher checkpoint is missing or does not fit (e.g. other classes).

    Example::

        >>> task = SegmentationTask(student={"arch": "Unet", "encoder_name": "tu-test_resnet"}, num_classes=3)
        >>> task(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """

    saliency_adapter = SegmentationSaliencyAdapter
    spec_class = SegmenterSpec
    model_factory = staticmethod(create_segmenter)

    def __init__(
        self,
        student: SegmenterSpec | Mapping[str, Any],
        teacher: SegmenterSpec | Mapping[str, Any] | None = None,
        num_classes: int = 7,
        class_names: Sequence[str] | None = None,
        loss: SegmentationLoss = "ce",
        dice_weight: float = 1.0,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = 255,
        **kwargs: Any,
    ) -> None:
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2 (background included), got {num_classes}")
        if loss not in _LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(_LOSSES)}, got {loss!r}")
        if class_weights is not None and (len(class_weights) != num_classes or min(class_weights) < 0):
            raise ConfigError(
                f"class_weights needs {num_classes} non-negative values (one per class), got {list(class_weights)}"
            )
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ConfigError(f"ignore_index {ignore_index} is a class index (num_classes={num_classes}); use e.g. 255")
        super().__init__(student, teacher, num_outputs=num_classes, output_names=class_names, **kwargs)
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.loss_name, self.dice_weight, self.ignore_index = loss, float(dice_weight), ignore_index
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.dice_loss = smp.losses.DiceLoss(mode="multiclass", from_logits=True, ignore_index=ignore_index)
        self.val_iou, self.test_iou = self._iou(), self._iou()
        self.val_dice, self.test_dice = self._dice(), self._dice()

    def _iou(self) -> MulticlassJaccardIndex:
        return MulticlassJaccardIndex(self.num_classes, average=None, ignore_index=self.ignore_index)

    def _dice(self) -> MulticlassF1Score:
        # Dice of a class over all pixels = its pixel-level F1 (2·TP / (2·TP + FP + FN)), ignore_index supported.
        return MulticlassF1Score(self.num_classes, average=None, ignore_index=self.ignore_index)

    @override
    def setup(self, stage: str) -> None:
        datamodule = self.check_datamodule(classes_note="(background included)")
        data_ignore = getattr(datamodule, "ignore_index", None)
        if data_ignore is not None and data_ignore != self.ignore_index:
            raise ConfigError(
                f"the data marks unlabelled pixels with {data_ignore} but the model ignores {self.ignore_index}; "
                f"set model.init_args.ignore_index: {data_ignore}"
            )

    def _loss(self, logits: Tensor, masks: Tensor) -> Tensor:
        if logits.shape[-2:] != masks.shape[-2:]:
            raise ConfigError(
                f"logits of size {tuple(logits.shape[-2:])} but masks of size {tuple(masks.shape[-2:])}; the "
                "network must keep the input size (image sizes divisible by 32 for most smp encoders)"
            )
        terms = []
        if self.loss_name in ("ce", "ce+dice"):
            ignore = self.ignore_index if self.ignore_index is not None else -100
            terms.append(F.cross_entropy(logits, masks, weight=self.class_weights, ignore_index=ignore))
        if self.loss_name in ("dice", "ce+dice"):
            terms.append((self.dice_weight if self.loss_name == "ce+dice" else 1.0) * self.dice_loss(logits, masks))
        return sum(terms)

    @override
    def task_loss(self, student_out: Tensor, batch: Any) -> Tensor:
        return self._loss(student_out, batch[1].long())

    @override
    def evaluate_batch(self, batch: Any, stage: str) -> Tensor:
        images, masks = batch[0], batch[1].long()
        logits = self.student(images)
        loss = self._loss(logits, masks)
        predictions = logits.argmax(dim=1)
        (self.val_iou if stage == "val" else self.test_iou).update(predictions, masks)
        (self.val_dice if stage == "val" else self.test_dice).update(predictions, masks)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True, batch_size=images.shape[0])
        return loss

    @override
    def log_epoch_metrics(self, stage: str) -> None:
        iou_metric, dice_metric = (self.val_iou, self.val_dice) if stage == "val" else (self.test_iou, self.test_dice)
        iou, dice = iou_metric.compute(), dice_metric.compute()  # synchronised across processes by torchmetrics
        iou_metric.reset()
        dice_metric.reset()
        self.log(f"{stage}/miou", iou.mean(), prog_bar=stage == "val")
        self.log(f"{stage}/dice", dice.mean())
        for name, value in zip(self.class_names, iou, strict=True):
            self.log(f"{stage}/iou/{name}", value)

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        images = batch[0] if isinstance(batch, list | tuple) else batch
        probabilities = self.student(images).softmax(dim=1)
        confidence, prediction = probabilities.max(dim=1)
        return {"prediction": prediction, "confidence": confidence}
