"""Saliency adapter of heatmap keypoint models: explain the heatmap peak of one keypoint, or of all of them.

The scalar explained for image ``i`` is the peak value ``max_{y,x} H_k[y, x]`` of keypoint ``k``'s heatmap, or, for
the "all keypoints" category (index ``K``, one past the last keypoint), the sum of the ``K`` peaks. The pointing
game asks whether the CAM's peak falls within ``radius × box size`` of the explained keypoint's true location (any
labelled keypoint, for "all keypoints").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from visiondistill.core.protocol import output_logits
from visiondistill.core.saliency import LogitsModel, SaliencyAdapter, register_saliency_adapter

__all__ = ["KeypointPeakTarget", "KeypointSaliencyAdapter", "keypoint_disc_masks"]


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
    def category_names(self, pl_module: object) -> list[str] | None:
        names = getattr(pl_module, "keypoint_names", None)
        return [*names, "all keypoints"] if names is not None else None

    @override
    def masks(self, batch: Any, height: int, width: int) -> Tensor | None:
        if not isinstance(batch, Mapping) or not isinstance(batch.get("keypoints"), Tensor):
            return None
        keypoints, box_size = batch["keypoints"], batch.get("box_size")
        if not isinstance(box_size, Tensor):
            box_size = torch.full((len(keypoints),), float(max(height, width)))
        which = self._explained if self._explained is not None else self.ground_truth(batch)
        return keypoint_disc_masks(keypoints, box_size, height, width, self.radius, which)
