"""Segmentation explained: the teacher-agreement measurement of segmenters.

What a segmenter's CAM explains (a class's logits over its region) is
`visiondistill.core.adapters.SegmentationSaliencyAdapter`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from visiondistill.core.adapters.segmentation import SegmentationSaliencyAdapter
from visiondistill.core.protocol import output_logits
from visiondistill.core.recorder import LayerSpec
from visiondistill.explain.agreement import saliency_teacher_agreement

__all__ = ["segmentation_teacher_agreement"]


def segmentation_teacher_agreement(
    teacher: nn.Module,
    student: nn.Module,
    images: Tensor,
    masks: Tensor | None = None,
    method: str = "gradcam",
    teacher_layers: Sequence[LayerSpec] = ("decoder",),
    student_layers: Sequence[LayerSpec] = ("decoder",),
    top_k: float = 0.1,
) -> dict[str, float]:
    """How far a segmenter's saliency agrees with its teacher's, explaining the teacher's dominant class per image.

    Args:
        teacher: The teacher segmenter.
        student: The student segmenter.
        images: Input batch ``N×C×H×W``.
        masks: True masks ``N×H×W`` (regions and pointing game); ``None`` uses the teacher's predicted masks.
        method: grad-cam method name.
        teacher_layers: Teacher layers to explain.
        student_layers: Student layers to explain.
        top_k: Fraction of pixels for ``topk_iou``.

    Returns:
        The mean of each saliency-agreement metric, ``pixel_agreement`` (fraction of pixels where the two
        predictions agree) and, with masks, ``pointing_game_teacher`` / ``pointing_game_student``.
    """
    teacher, student = teacher.eval().cpu(), student.eval().cpu()
    with torch.no_grad():
        agree = (output_logits(student(images)).argmax(1) == output_logits(teacher(images)).argmax(1)).float().mean()
    batch = (images, masks) if masks is not None else (images,)
    result = saliency_teacher_agreement(
        SegmentationSaliencyAdapter(),
        teacher,
        student,
        batch,
        method=method,
        teacher_layers=teacher_layers,
        student_layers=student_layers,
        top_k=top_k,
    )
    result["pixel_agreement"] = float(agree)
    return result
