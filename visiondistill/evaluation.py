"""Measuring trained networks: accuracy on a held-out split, size, FLOPs and CPU latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from torchmetrics.classification import MulticlassAccuracy

from visiondistill.core.recorder import LayerSpec
from visiondistill.models.checkpoints import load_trained_student
from visiondistill.models.classifiers import ClassifierSpec, create_classifier


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of a model."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, example: Tensor) -> int:
    """Floating-point operations of one forward pass (``torch.utils.flop_counter``; a multiply-add counts 2)."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(example)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


@torch.inference_mode()
def measure_latency(model: nn.Module, example: Tensor, warmup: int = 10, runs: int = 50) -> float:
    """Median wall time of one forward pass, in milliseconds (eval mode, inference mode)."""
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            model(example)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model(example)
            times.append(time.perf_counter() - start)
        return 1000.0 * statistics.median(times)
    finally:
        model.train(was_training)


def load_student(checkpoint_path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds the trained network of a visiondistill classification run from its checkpoint alone.

    Args:
        checkpoint_path: A ``.ckpt`` written by a ``ClassificationTask`` run.

    Returns:
        The network (eval mode) and the run's hyper-parameters.

    Raises:
        CheckpointError: When the file is missing or was not written by a classification run.
    """

    def rebuild(stored: Mapping[str, Any], num_classes: int) -> nn.Module:
        spec = ClassifierSpec.coerce(stored, role="student")
        spec.checkpoint, spec.pretrained = None, False
        return create_classifier(spec, num_classes, role="student")

    return load_trained_student(checkpoint_path, "ClassificationTask", "name", "num_classes", rebuild)


@dataclass
class ClassifierReport:
    """Accuracy and cost of one classifier on one split."""

    name: str
    top1: float
    top5: float | None
    per_class: dict[str, float]
    params: int
    flops: int
    latency_ms: float
    checkpoint_mb: float | None


@torch.inference_mode()
def evaluate_classifier(
    name: str,
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    class_names: list[str],
    checkpoint_path: str | Path | None = None,
) -> ClassifierReport:
    """Top-1/top-5/per-class accuracy over a dataloader, plus params, FLOPs and batch-1 CPU latency.

    Args:
        name: Row name in reports.
        model: The classifier (any device; measured on the CPU).
        batches: ``(images, targets)`` batches of the held-out split.
        class_names: Names of the classes, in index order.
        checkpoint_path: The checkpoint the model came from, for its size on disk.

    Returns:
        The report.
    """
    model = model.eval().cpu()
    num_classes = len(class_names)
    top1 = MulticlassAccuracy(num_classes, average="micro")
    top5 = MulticlassAccuracy(num_classes, top_k=5, average="micro") if num_classes > 5 else None
    per_class = MulticlassAccuracy(num_classes, average=None)
    example = None
    for images, targets in batches:
        logits = model(images)
        for metric in (top1, top5, per_class):
            if metric is not None:
                metric.update(logits, targets)
        example = images[:1] if example is None else example
    if example is None:
        raise ValueError(f"{name}: the evaluation split is empty")
    size = Path(checkpoint_path).stat().st_size / 2**20 if checkpoint_path else None
    return ClassifierReport(
        name=name,
        top1=float(top1.compute()),
        top5=float(top5.compute()) if top5 is not None else None,
        per_class={c: float(v) for c, v in zip(class_names, per_class.compute(), strict=True)},
        params=count_parameters(model),
        flops=count_flops(model, example),
        latency_ms=measure_latency(model, example),
        checkpoint_mb=size,
    )


def teacher_agreement(
    teacher: nn.Module,
    student: nn.Module,
    images: Tensor,
    method: str = "gradcam",
    teacher_layers: Sequence[LayerSpec] = (-1,),
    student_layers: Sequence[LayerSpec] = (-1,),
    top_k: float = 0.1,
) -> dict[str, float]:
    """How far a student's saliency agrees with the teacher's on a set of images (the teacher's predictions explained).

    The same measurement serves students trained with and without a teacher, so a report can show whether
    distillation raised agreement.

    Args:
        teacher: The teacher classifier.
        student: The student classifier.
        images: Input batch ``N×C×H×W``.
        method: grad-cam method name (see `visiondistill.explain.cam.CAM_METHODS`).
        teacher_layers: Teacher layers to explain (module paths or stage indices).
        student_layers: Student layers to explain.
        top_k: Fraction of pixels for ``topk_iou``.

    Returns:
        The mean of each `visiondistill.explain.metrics.saliency_agreement` metric.
    """
    from visiondistill.core.saliency import ClassificationSaliencyAdapter
    from visiondistill.explain.agreement import saliency_teacher_agreement

    return saliency_teacher_agreement(
        ClassificationSaliencyAdapter(),
        teacher,
        student,
        images,
        method=method,
        teacher_layers=teacher_layers,
        student_layers=student_layers,
        top_k=top_k,
    )


def markdown_table(rows: list[Mapping[str, Any]]) -> str:
    """Renders dict rows (same keys) as a Markdown table."""
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines)
