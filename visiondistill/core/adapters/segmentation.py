"""Saliency adapter of semantic segmentation: explain one class's logits summed over a region of the image.

The target follows grad-cam's ``SemanticSegmentationTarget``: for image ``i`` and class ``c``, the scalar explained is
``Σ_{(y, x) ∈ R} logits[c, y, x]`` over a region ``R`` — by default the true mask of ``c`` (the pixels the network
should label ``c``), falling back to the explained model's predicted mask of ``c``, then to the whole image. The
class explained per image is its dominant foreground class (most pixels), in the truth or in a model's prediction.
The pointing game is played against the true mask of the explained class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from visiondistill.core.protocol import ProtocolError, batch_targets, output_logits
from visiondistill.core.saliency import LogitsModel, SaliencyAdapter, register_saliency_adapter

__all__ = ["ClassRegionTarget", "SegmentationSaliencyAdapter"]


class ClassRegionTarget:
    """grad-cam target: the logits of ``category`` summed over ``region`` (one image's ``K×H×W`` output).

    Args:
        category: The class whose logits are summed.
        region: ``H×W`` weights (usually a 0/1 mask), resized (nearest) when the output has another size; ``None``
            sums over the whole image.

    Example::

        >>> target = ClassRegionTarget(1, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        >>> float(target(torch.arange(8.0).view(2, 2, 2)))
        4.0
    """

    def __init__(self, category: int, region: Tensor | None) -> None:
        self.category = int(category)
        self.region = region.float() if region is not None else None

    def __call__(self, output: Tensor) -> Tensor:
        """The explained scalar for one image's output."""
        if self.region is None:
            return output[self.category].sum()
        region = self.region.to(device=output.device, dtype=output.dtype)
        if tuple(region.shape) != tuple(output.shape[-2:]):
            region = F.interpolate(region[None, None], size=output.shape[-2:], mode="nearest")[0, 0]
        return (output[self.category] * region).sum()


@register_saliency_adapter("segmentation")
class SegmentationSaliencyAdapter(SaliencyAdapter):
    """Semantic segmentation: explain a class's logits summed over its mask (see the module docstring).

    Batches are ``(images, masks)`` with ``N×H×W`` class-index masks (or dicts with a ``mask``/``target`` key).

    Args:
        region: ``"true"`` sums the logits over the true mask of the class (falling back to the predicted mask when
            the batch has no mask or the class is absent from it), ``"predicted"`` over the mask predicted by the
            model explained last by `predict` (the teacher, in `GradCAMCallback`).
        background: Class index of the background, never chosen as the explained class when a foreground class is
            present; ``None`` when every class is foreground.
        ignore_index: Mask value of unlabelled pixels.

    Raises:
        ValueError: For an unknown ``region``.
    """

    def __init__(
        self,
        region: Literal["true", "predicted"] = "true",
        background: int | None = 0,
        ignore_index: int | None = 255,
    ) -> None:
        if region not in ("true", "predicted"):
            raise ValueError(f"SegmentationSaliencyAdapter: region must be 'true' or 'predicted', got {region!r}")
        self.region, self.background, self.ignore_index = region, background, ignore_index
        self._predicted: Tensor | None = None  # argmax map of the model passed to `predict` last
        self._explained: Tensor | None = None  # the classes passed to `targets` last

    @override
    def cam_model(self, model: nn.Module) -> nn.Module:
        return LogitsModel(model)

    def _dominant(self, counts: Tensor) -> Tensor:
        """Per image, the class with the most pixels, preferring foreground classes; ``counts`` is ``N×K``."""
        counts = counts.clone().float()
        if self.background is not None and counts.shape[1] > 1:
            has_foreground = (counts.sum(dim=1) - counts[:, self.background]) > 0
            counts[has_foreground, self.background] = -1.0
        return counts.argmax(dim=1)

    @override
    @torch.no_grad()
    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        logits = output_logits(model(images))
        predicted = logits.argmax(dim=1)
        self._predicted = predicted.cpu()
        counts = F.one_hot(predicted, logits.shape[1]).flatten(1, 2).sum(dim=1)
        if self.background is not None:
            # No foreground pixel predicted: explain the foreground class the model finds most likely overall.
            probabilities = logits.softmax(dim=1).mean(dim=(2, 3))
            probabilities[:, self.background] = -1.0
            empty = (counts.sum(dim=1) - counts[:, self.background]) == 0
            counts[empty] = 0
            counts[empty, probabilities[empty].argmax(dim=1)] = 1
        return self._dominant(counts).cpu()

    def true_masks(self, batch: Any) -> Tensor | None:
        """The batch's ``N×H×W`` class-index masks (on the CPU), or ``None``."""
        try:
            masks = batch_targets(batch)
        except ProtocolError:
            return None
        if masks.ndim != 3 or masks.is_floating_point():
            return None
        return masks.long().cpu()

    @override
    def ground_truth(self, batch: Any) -> Tensor | None:
        masks = self.true_masks(batch)
        if masks is None:
            return None
        valid = masks if self.ignore_index is None else masks.masked_fill(masks == self.ignore_index, -1)
        num_classes = max(int(valid.max()) + 1, 1)
        counts = torch.stack([(valid == k).flatten(1).sum(dim=1) for k in range(num_classes)], dim=1)
        return self._dominant(counts)

    @override
    def targets(self, categories: Tensor, batch: Any) -> list[Callable[[Tensor], Tensor]]:
        self._explained = categories.cpu().long()
        masks = self.true_masks(batch) if self.region == "true" else None
        targets = []
        for i, category in enumerate(self._explained.tolist()):
            candidates = []
            if masks is not None:
                candidates.append(masks[i] == category)
            if self._predicted is not None and i < len(self._predicted):
                candidates.append(self._predicted[i] == category)
            # Nowhere to be found (None): the class's logits over the whole image.
            targets.append(ClassRegionTarget(category, next((c for c in candidates if c.any()), None)))
        return targets

    @override
    def masks(self, batch: Any, height: int, width: int) -> Tensor | None:
        masks = self.true_masks(batch)
        if masks is None or tuple(masks.shape[-2:]) != (height, width):
            return None
        categories = self._explained if self._explained is not None else self.ground_truth(batch)
        chosen = masks == categories.view(-1, 1, 1)
        if self.background is not None:
            unlabelled = self.ignore_index if self.ignore_index is not None else -1
            foreground = (masks != self.background) & (masks != unlabelled)
            empty = ~chosen.flatten(1).any(dim=1)
            chosen[empty] = foreground[empty]  # the explained class is absent: any object counts
        return chosen
