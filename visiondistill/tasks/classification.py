"""Image classification: a timm student distilled from a timm teacher."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from visiondistill.core.errors import ConfigError
from visiondistill.models.classifiers import ClassifierSpec, create_classifier
from visiondistill.tasks.base import DistillationTask


class ClassificationTask(DistillationTask):
    """Image classification with an optional frozen teacher.

    Train a teacher by giving only ``student`` (the network to train) and no ``teacher``; train a
    student from scratch the same way; distil by adding ``teacher`` (usually from the teacher run's
    checkpoint) and distillation callbacks on the trainer.

    Args:
        student: Spec of the network to train (a timm model name and options), or a mapping of its fields.
        teacher: Spec of the frozen teacher, usually with ``checkpoint`` set; ``None`` for no teacher.
        num_classes: Number of classes; checked against the datamodule at setup.
        class_names: Class names for per-class metrics; read from the datamodule when ``None``.
        label_smoothing: Label smoothing of the cross-entropy.
        task_weight: Multiplier of the cross-entropy (0: the distillation terms alone teach, as in data-free
            distillation on synthesised images, docs/data_free.md).
        weight_decay: Weight decay (0.05, AdamW's usual value for classifiers; the other tasks default to 1e-4).
        **kwargs: The optimiser arguments of `DistillationTask`: ``optimizer``, ``lr``, ``warmup_epochs``,
            ``scheduler``.

    Raises:
        ValueError: When teacher and student disagree on classes or input channels.
        CheckpointError: When the teacher checkpoint is missing or does not fit.

    Example::

        >>> import torch
        >>> task = ClassificationTask(student=ClassifierSpec(name="test_resnet"), num_classes=3)
        >>> task(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 3])
    """

    spec_class = ClassifierSpec
    model_factory = staticmethod(create_classifier)

    def __init__(
        self,
        student: ClassifierSpec | Mapping[str, Any],
        teacher: ClassifierSpec | Mapping[str, Any] | None = None,
        num_classes: int = 6,
        class_names: Sequence[str] | None = None,
        label_smoothing: float = 0.0,
        weight_decay: float = 0.05,
        task_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
        if not (isinstance(task_weight, int | float) and task_weight >= 0):
            raise ConfigError(f"task_weight must be a number >= 0, got {task_weight!r}")
        super().__init__(
            student, teacher, weight_decay=weight_decay, num_outputs=num_classes, output_names=class_names, **kwargs
        )
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.label_smoothing = label_smoothing
        self.task_weight = float(task_weight)
        self.val_metrics = self._metrics("val")
        self.test_metrics = self._metrics("test")
        self.val_per_class = MulticlassAccuracy(num_classes, average=None)
        self.test_per_class = MulticlassAccuracy(num_classes, average=None)

    def _metrics(self, prefix: str) -> MetricCollection:
        metrics = {"acc_top1": MulticlassAccuracy(self.num_classes, average="micro")}
        if self.num_classes > 5:
            metrics["acc_top5"] = MulticlassAccuracy(self.num_classes, top_k=5, average="micro")
        return MetricCollection(metrics, prefix=f"{prefix}/")

    @override
    def setup(self, stage: str) -> None:
        self.check_datamodule()

    @override
    def task_loss(self, student_out: Tensor, batch: Any) -> Tensor:
        _, targets = batch[0], batch[1]
        loss = F.cross_entropy(student_out, targets, label_smoothing=self.label_smoothing)
        return loss * self.task_weight if self.task_weight != 1.0 else loss

    @override
    def evaluate_batch(self, batch: Any, stage: str) -> Tensor:
        images, targets = batch[0], batch[1]
        logits = self.student(images)
        loss = F.cross_entropy(logits, targets)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        per_class = self.val_per_class if stage == "val" else self.test_per_class
        metrics.update(logits, targets)
        per_class.update(logits, targets)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True, batch_size=images.shape[0])
        self.log_dict(metrics, prog_bar=stage == "val", batch_size=images.shape[0])
        return loss

    @override
    def log_epoch_metrics(self, stage: str) -> None:
        metric = self.val_per_class if stage == "val" else self.test_per_class
        values = metric.compute()  # synchronised across processes by torchmetrics
        metric.reset()
        for name, value in zip(self.class_names, values, strict=True):
            self.log(f"{stage}/acc_class/{name}", value)

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        images = batch[0] if isinstance(batch, list | tuple) else batch
        probabilities = self.student(images).softmax(dim=-1)
        confidence, prediction = probabilities.max(dim=-1)
        return {"prediction": prediction, "confidence": confidence, "probabilities": probabilities}
