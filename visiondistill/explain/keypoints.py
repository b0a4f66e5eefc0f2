"""Keypoints explained: the teacher-agreement measurement of keypoint models and a grid of their keypoints.

What a keypoint model's CAM explains (a heatmap peak) is `visiondistill.core.adapters.KeypointSaliencyAdapter`.
`keypoint_grid` draws true and predicted keypoints on the images.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from visiondistill.core.adapters.keypoints import KeypointSaliencyAdapter
from visiondistill.core.recorder import LayerSpec
from visiondistill.explain.agreement import saliency_teacher_agreement
from visiondistill.explain.render import overlay, render_grid, to_hwc

__all__ = ["KEYPOINT_COLORS", "keypoint_grid", "keypoint_teacher_agreement"]

#: Colours of keypoints 0, 1, 2 … in pictures (RGB), repeated for more keypoints.
KEYPOINT_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
)


def keypoint_grid(
    images: Tensor,
    true_keypoints: Tensor | None,
    columns: Sequence[tuple[str, Tensor]],
    keypoint_names: Sequence[str] | None = None,
    maps: Sequence[Tensor | None] | None = None,
    scale: int = 3,
    samples_per_row: int = 4,
    title: str | None = None,
) -> np.ndarray:
    """A grid with, per image, one panel per model: its predicted keypoints (crosses) over the true ones (circles).

    Args:
        images: ``N×C×H×W`` in [0, 1].
        true_keypoints: ``N×K×3`` in pixels of the images (unlabelled ones are not drawn), or ``None``.
        columns: ``(heading, keypoints)`` per panel, ``keypoints`` ``N×K×2`` (or ``N×K×3``).
        keypoint_names: Names, listed in the title with their colours' order.
        maps: Per column, CAMs ``N×h×w`` blended under the keypoints, or ``None``.
        scale: Enlargement of the panels (keypoints are drawn at the enlarged size).
        samples_per_row: Images side by side.
        title: Figure title.

    Returns:
        The grid, uint8 ``H×W×3``.

    Example::

        >>> grid = keypoint_grid(torch.rand(2, 3, 16, 16), torch.rand(2, 4, 3) * 16, [("student", torch.rand(2, 4, 2))])
        >>> grid.dtype, grid.ndim
        (dtype('uint8'), 3)
    """
    base = to_hwc(images)
    panels, captions = [], []
    for i in range(base.shape[0]):
        row, row_captions = [], []
        for c, (heading, keypoints) in enumerate(columns):
            layer = maps[c] if maps is not None else None
            picture = overlay(images[i : i + 1], layer[i : i + 1])[0] if layer is not None else base[i]
            canvas = np.ascontiguousarray((np.clip(picture, 0, 1) * 255).astype(np.uint8))
            canvas = cv2.resize(canvas, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
            if true_keypoints is not None:
                for k, (x, y, v) in enumerate(true_keypoints[i].tolist()):
                    if v > 0:
                        colour = KEYPOINT_COLORS[k % len(KEYPOINT_COLORS)]
                        cv2.circle(canvas, (round(x * scale), round(y * scale)), scale + 2, colour, 1, cv2.LINE_AA)
            for k, point in enumerate(keypoints[i].tolist()):
                colour = KEYPOINT_COLORS[k % len(KEYPOINT_COLORS)]
                centre = (round(point[0] * scale), round(point[1] * scale))
                cv2.drawMarker(canvas, centre, colour, cv2.MARKER_CROSS, 2 * scale + 2, 2)
            row.append(canvas)
            row_captions.append(heading)
        panels.append(row)
        captions.append(row_captions)
    legend = ", ".join(keypoint_names) if keypoint_names else ""
    heading = " · ".join(t for t in (title, "o true, + predicted", f"colours: {legend}" if legend else "") if t)
    return render_grid(panels, captions, samples_per_row=samples_per_row, title=heading)


def keypoint_teacher_agreement(
    teacher: nn.Module,
    student: nn.Module,
    images: Tensor,
    keypoints: Tensor | None = None,
    box_size: Tensor | None = None,
    method: str = "gradcam",
    teacher_layers: Sequence[LayerSpec] = ("head",),
    student_layers: Sequence[LayerSpec] = ("head",),
    keypoint: int | None = None,
    radius: float = 0.1,
    top_k: float = 0.1,
) -> dict[str, float]:
    """How far a keypoint model's saliency agrees with its teacher's, explaining the same keypoint target.

    Args:
        teacher: The teacher.
        student: The student.
        images: Input crops ``N×C×H×W``.
        keypoints: True keypoints ``N×K×3`` in crop pixels (for the pointing game), or ``None``.
        box_size: ``N`` box sizes in crop pixels (pointing-game radius), with ``keypoints``.
        method: grad-cam method name.
        teacher_layers: Teacher layers explained (default: the head's output, at heatmap resolution).
        student_layers: Student layers explained.
        keypoint: The keypoint explained; ``None`` for the sum over keypoints.
        radius: Pointing-game radius, as a fraction of the box size.
        top_k: Fraction of pixels for ``topk_iou``.

    Returns:
        The mean of each saliency-agreement metric and, with keypoints, ``pointing_game_teacher`` /
        ``pointing_game_student``.
    """
    batch: dict[str, Tensor] = {"image": images}
    if keypoints is not None:
        sizes = box_size if box_size is not None else torch.full((len(images),), float(images.shape[-1]))
        batch |= {"keypoints": keypoints, "box_size": sizes}
    adapter = KeypointSaliencyAdapter(keypoint=keypoint, radius=radius)
    return saliency_teacher_agreement(
        adapter,
        teacher,
        student,
        batch,
        method,
        teacher_layers=teacher_layers,
        student_layers=student_layers,
        top_k=top_k,
    )
