"""Image classification: a timm student distilled from a timm teacher."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from visiondistill.models.classifiers import ClassifierSpec, create_classifier
from visiondistill.tasks.base import DistillationTask, OptimizerName, SchedulerName


class ClassificationTask(DistillationTask):
    """Image classification with an optional frozen teacher.

    Train a teacher by giving only ``student`` (the network to train) and no ``teacher``; train a
    student from scratch the same way; distil by adding ``teacher`` (usually from the teacher run's
    checkpoint) and distillation callbacks on the trainer.

    Args:
        student: Spec of the network to train (a timm model name and options).
        teacher: Spec of the frozen teacher, usually with ``checkpoint`` set; ``None`` for no teacher.
        num_classes: Number of classes; checked against the datamodule at setup.
        class_names: Class names for per-class metrics; read from the datamodule when ``None``.
        label_smoothing: Label smoothing of the cross-entropy.
        optimizer: ``"adamw"`` or ``"sgd"``.
        lr: Peak learning rate.
        weight_decay: Weight decay.
        warmup_epochs: Linear warm-up length, in epochs.
        scheduler: ``"cosine"`` or ``"constant"``.

    Raises:
        ValueError: When teacher and student disagree on classes or input channels.
        CheckpointError: When the teacher checkpoint is missing or does not fit.

    Example::

        >>> import torch
        >>> task = ClassificationTask(student=ClassifierSpec(name="test_resnet"), num_classes=3)
        >>> task(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        student: ClassifierSpec,
        teacher: ClassifierSpec | None = None,
        num_classes: int = 6,
        class_names: Sequence[str] | None = None,
        label_smoothing: float = 0.0,
        optimizer: OptimizerName = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_epochs: float = 1.0,
        scheduler: SchedulerName = "cosine",
    ) -> None:
        student_spec = ClassifierSpec.coerce(student, role="student")
        teacher_spec = ClassifierSpec.coerce(teacher, role="teacher") if teacher is not None else None
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        if teacher_spec is not None and teacher_spec.in_chans != student_spec.in_chans:
            raise ValueError(
                f"teacher takes {teacher_spec.in_chans} input channels but the student takes "
                f"{student_spec.in_chans}; they see the same images, so set the same in_chans"
            )
        super().__init__(
            student=create_classifier(student_spec, num_classes, role="student"),
            teacher=create_classifier(teacher_spec, num_classes, role="teacher") if teacher_spec else None,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            scheduler=scheduler,
        )
        self.record_hyperparameters(student_spec, teacher_spec, class_names)
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.label_smoothing = label_smoothing
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
        self.check_datamodule(self.student_spec.in_chans)

    @override
    def task_loss(self, student_out: Tensor, batch: Any) -> Tensor:
        _, targets = batch[0], batch[1]
        return F.cross_entropy(student_out, targets, label_smoothing=self.label_smoothing)

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
