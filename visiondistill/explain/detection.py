"""Detection explained: the teacher-agreement measurement of FCOS detectors and a grid of their boxes and CAMs.

What a detector's CAM explains (the box-score target) is `visiondistill.core.adapters.DetectionSaliencyAdapter`.
`detection_teacher_agreement` gives the report's saliency numbers; `detection_grid` draws true and predicted boxes
next to the teacher's and the student's maps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from visiondistill.core.adapters.detection import (
    STUDENT_COLOR,
    TEACHER_COLOR,
    TRUE_COLOR,
    DetectionSaliencyAdapter,
    draw_boxes,
    shown_boxes,
)
from visiondistill.core.recorder import LayerSpec, resolve_layer
from visiondistill.explain.cam import cam_method, compute_cams
from visiondistill.explain.metrics import pointing_game_hits, saliency_agreement
from visiondistill.explain.render import comparison_grid

__all__ = ["detection_grid", "detection_teacher_agreement", "fpn_levels"]


def detection_grid(
    images: Tensor,
    true_boxes: Sequence[Tensor],
    teacher_maps: Tensor,
    student_maps: Tensor,
    teacher_detections: Sequence[Mapping[str, Tensor]],
    student_detections: Sequence[Mapping[str, Tensor]],
    score_threshold: float = 0.5,
    max_boxes: int = 5,
    title: str | None = None,
) -> np.ndarray:
    """``input with true (green), teacher (red) and student (blue) boxes | teacher CAM | student CAM`` per image.

    Each network's boxes are those `shown_boxes` keeps; the caption counts them (``T`` teacher, ``S`` student).
    """

    def kept(detections: Sequence[Mapping[str, Tensor]]) -> list[Tensor]:
        return [shown_boxes(d, score_threshold, max_boxes) for d in detections]

    drawn = draw_boxes(images, list(true_boxes), TRUE_COLOR)
    drawn = draw_boxes(drawn, kept(teacher_detections), TEACHER_COLOR)
    drawn = draw_boxes(drawn, kept(student_detections), STUDENT_COLOR)
    counts = [
        f"#{i} T{len(t)} S{len(s)}"
        for i, (t, s) in enumerate(zip(kept(teacher_detections), kept(student_detections), strict=True))
    ]
    return comparison_grid(drawn, [("teacher", teacher_maps), ("student", student_maps)], labels=counts, title=title)


def fpn_levels(model: nn.Module) -> list[str]:
    """Module paths of a detector's FPN levels (``fpn.layer_blocks.<i>``), fine to coarse."""
    return [stage["module"] for stage in getattr(model, "feature_info", []) if stage["module"].startswith("fpn.")]


def detection_teacher_agreement(
    teacher: nn.Module,
    student: nn.Module,
    images: Tensor,
    targets: Sequence[Mapping[str, Tensor]],
    method: str = "gradcam",
    teacher_layers: Sequence[LayerSpec] | None = None,
    student_layers: Sequence[LayerSpec] | None = None,
    top_k: float = 0.1,
    score_threshold: float = 0.5,
) -> tuple[dict[str, float], dict[str, Any]]:
    """How far a detector's saliency and detections agree with its teacher's, explaining the teacher's detections.

    Args:
        teacher: The teacher detector.
        student: The student detector.
        images: Input batch ``N×C×H×W``.
        targets: True ``boxes``/``labels`` per image (pointing game; fallback reference boxes).
        method: grad-cam method name (``gradcam``, ``eigencam`` …).
        teacher_layers: Teacher layers to explain; ``None``: every FPN level (`fpn_levels`), so the maps see each
            detection at whichever level predicts it (a level's gradient comes only from its own predictions).
        student_layers: Student layers to explain; ``None``: every FPN level.
        top_k: Fraction of pixels for ``topk_iou``.
        score_threshold: Teacher detections at or above it are the reference boxes and the pseudo ground truth.

    Returns:
        The mean of each saliency-agreement metric and ``pointing_game_teacher`` / ``pointing_game_student``; and
        the raw material of a grid and of box agreement (``maps``, ``teacher`` and ``student`` detections; see
        `visiondistill.tasks.detection.box_map_vs_teacher`).
    """
    adapter = DetectionSaliencyAdapter(score_threshold=score_threshold)
    teacher, student = teacher.eval().cpu(), student.eval().cpu()
    batch = (images, list(targets))
    student_detections = DetectionSaliencyAdapter(score_threshold=score_threshold)
    student_detections.predict(student, images)
    explained = adapter.predict(teacher, images)
    references = adapter.targets(explained, batch)
    maps = {}
    for role, model, layers in (("teacher", teacher, teacher_layers), ("student", student, student_layers)):
        modules = [resolve_layer(model, layer, role=role)[1] for layer in (layers or fpn_levels(model))]
        with torch.enable_grad():
            maps[role] = compute_cams(cam_method(method), adapter.cam_model(model), modules, images, references)
    result = {k: float(v) for k, v in saliency_agreement(maps["teacher"], maps["student"], top_k=top_k).items()}
    masks = adapter.masks(batch, *images.shape[-2:])
    for role in ("teacher", "student"):
        result[f"pointing_game_{role}"] = float(pointing_game_hits(maps[role], masks).float().mean())
    return result, {"maps": maps, "teacher": adapter.detections, "student": student_detections.detections}
