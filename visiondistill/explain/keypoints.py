"""Grad-CAM for heatmap keypoint models: explain the heatmap peak of one keypoint, or of all of them.

The scalar explained for image ``i`` is the peak value ``max_{y,x} H_k[y, x]`` of keypoint ``k``'s heatmap, or, for
the "all keypoints" category (index ``K``, one past the last keypoint), the sum of the ``K`` peaks. The pointing
game asks whether the CAM's peak falls within ``radius × box size`` of the explained keypoint's true location (any
labelled keypoint, for "all keypoints"). `keypoint_grid` draws true and predicted keypoints on the images.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from typing_extensions import override

from visiondistill.distill.protocol import output_logits
from visiondistill.distill.recorder import LayerSpec
from visiondistill.explain.render import render_grid, to_hwc
from visiondistill.explain.saliency import LogitsModel, SaliencyAdapter, register_saliency_adapter

__all__ = [
    "KeypointPeakTarget",
    "KeypointSaliencyAdapter",
    "keypoint_disc_masks",
    "keypoint_grid",
    "keypoint_teacher_agreement",
]

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


class KeypointPeakTarget:
    """grad-cam target: the heatmap peak of one keypoint, or the sum of every keypoint's peak.

    The output is one image's ``K×h×w`` heatmaps; a ``keypoint`` of ``K`` or more selects the sum.

    Example::

        >>> heatmaps = torch.zeros(2, 3, 3); heatmaps[0, 1, 1] = 0.8; heatmaps[1, 0, 2] = 0.5
        >>> round(float(KeypointPeakTarget(0)(heatmaps)), 6), round(float(KeypointPeakTarget(2)(heatmaps)), 6)
        (0.8, 1.3)
    """

    def __init__(self, keypoint: int) -> None:
        self.keypoint = int(keypoint)

    def __call__(self, output: Tensor) -> Tensor:
        """The explained scalar for one image's heatmaps."""
        peaks = output.flatten(1).amax(dim=1)
        return peaks[self.keypoint] if self.keypoint < len(peaks) else peaks.sum()


def keypoint_disc_masks(
    keypoints: Tensor, box_size: Tensor, height: int, width: int, radius: float, which: Sequence[int] | None = None
) -> Tensor:
    """Discs of radius ``radius · box size`` (at least one pixel) around labelled keypoints, one mask per image.

    A pixel counts when its centre ``(j + 0.5, i + 0.5)`` is within the radius of the keypoint (boundary included).

    Args:
        keypoints: ``N×K×3`` ``(x, y, v)`` in pixels of the masks' grid.
        box_size: ``N`` box sizes.
        height: Mask height.
        width: Mask width.
        radius: Fraction of the box size.
        which: Per image, the keypoint whose disc is drawn; an index ``>= K`` (or ``None``) draws every labelled one.

    Returns:
        Bool masks ``N×H×W`` (empty for an image whose keypoint is not labelled).

    Example::

        >>> keypoint_disc_masks(torch.tensor([[[1.5, 1.5, 2.0]]]), torch.tensor([10.0]), 3, 3, 0.1).int()[0]
        tensor([[0, 1, 0],
                [1, 1, 1],
                [0, 1, 0]], dtype=torch.int32)
    """
    n, k = keypoints.shape[:2]
    ys = torch.arange(height, dtype=torch.float64).view(1, height, 1) + 0.5
    xs = torch.arange(width, dtype=torch.float64).view(1, 1, width) + 0.5
    points = keypoints.detach().cpu().double()
    radii = (radius * box_size.detach().cpu().double()).clamp(min=1.0)
    masks = torch.zeros(n, height, width, dtype=torch.bool)
    for i in range(n):
        chosen = range(k) if which is None or int(which[i]) >= k else [int(which[i])]
        for j in chosen:
            x, y, v = points[i, j]
            if v > 0:
                masks[i] |= ((xs - x) ** 2 + (ys - y) ** 2 <= radii[i] ** 2)[0]
    return masks


@register_saliency_adapter("keypoints")
class KeypointSaliencyAdapter(SaliencyAdapter):
    """Heatmap keypoint models: explain one keypoint's heatmap peak, or the sum of all peaks (module docstring).

    The "category" of an image is the keypoint explained: ``keypoint`` for every image, or ``K`` ("all keypoints")
    when ``keypoint`` is ``None``; the true and predicted categories are therefore the same, and `GradCAMCallback`'s
    ``target`` choice only decides nothing here. Batches are dicts from `visiondistill.data.KeypointCrops`
    (``keypoints`` and ``box_size`` drive the pointing game).

    Args:
        keypoint: The keypoint explained; ``None`` explains the sum over keypoints.
        radius: Pointing-game radius, as a fraction of the box size.

    Raises:
        ValueError: For a negative ``keypoint`` or a non-positive ``radius``.
    """

    def __init__(self, keypoint: int | None = None, radius: float = 0.1) -> None:
        if keypoint is not None and int(keypoint) < 0:
            raise ValueError(f"KeypointSaliencyAdapter: keypoint must be >= 0 or None, got {keypoint}")
        if not radius > 0:
            raise ValueError(f"KeypointSaliencyAdapter: radius must be > 0, got {radius}")
        self.keypoint, self.radius = keypoint, float(radius)
        self._explained: Tensor | None = None

    def _categories(self, count: int, num_keypoints: int) -> Tensor:
        if self.keypoint is not None and self.keypoint >= num_keypoints:
            raise ValueError(
                f"KeypointSaliencyAdapter: keypoint {self.keypoint} does not exist; the model has {num_keypoints} "
                f"keypoints (0..{num_keypoints - 1}); use None for all of them"
            )
        return torch.full((count,), num_keypoints if self.keypoint is None else self.keypoint, dtype=torch.long)

    @override
    def cam_model(self, model: nn.Module) -> nn.Module:
        return LogitsModel(model)

    @override
    @torch.no_grad()
    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        heatmaps = output_logits(model(images))
        return self._categories(len(images), heatmaps.shape[1])

    @override
    def ground_truth(self, batch: Any) -> Tensor | None:
        keypoints = batch.get("keypoints") if isinstance(batch, Mapping) else None
        if not isinstance(keypoints, Tensor):
            return None
        return self._categories(len(keypoints), keypoints.shape[1])

    @override
    def targets(self, categories: Tensor, batch: Any) -> list[Callable[[Tensor], Tensor]]:
        self._explained = categories.cpu().long()
        return [KeypointPeakTarget(int(c)) for c in self._explained.tolist()]

    @override
    def masks(self, batch: Any, height: int, width: int) -> Tensor | None:
        if not isinstance(batch, Mapping) or not isinstance(batch.get("keypoints"), Tensor):
            return None
        keypoints, box_size = batch["keypoints"], batch.get("box_size")
        if not isinstance(box_size, Tensor):
            box_size = torch.full((len(keypoints),), float(max(height, width)))
        which = self._explained if self._explained is not None else self.ground_truth(batch)
        return keypoint_disc_masks(keypoints, box_size, height, width, self.radius, which)


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
    from visiondistill.explain.render import overlay

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
    from visiondistill.explain.agreement import saliency_teacher_agreement

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
