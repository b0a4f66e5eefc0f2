"""Saliency adapter of FCOS detectors: a box-score target built from reference detections.

What is explained per image follows grad-cam's ``FasterRCNNBoxScoreTarget``: for each reference box ``b`` of class
``c`` (by default the teacher's detections of the explained class), the location whose predicted box overlaps ``b``
most is found among all dense predictions; when that IoU exceeds ``iou_threshold`` it adds ``IoU + score_c`` to the
explained scalar, where ``score_c = sqrt(σ(cls_c)·σ(centre-ness))`` is FCOS's detection score. The CAM therefore
shows what makes the network find (and place) those boxes. The class explained per image is the class of the
model's highest-scoring detection (or, for the truth, of the largest true box).

The pointing game is played against the true boxes of the explained class (all true boxes when it has none there).
The adapter reads a detector through its methods (``postprocess``, ``decode_boxes``) and a dense output through its
fields (``cls_logits``, ``bbox_ctrness``, ``decoded_boxes()``), as `visiondistill.models.Detector` and its
`visiondistill.models.DetectorOutput` offer them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou, nms
from typing_extensions import override

from visiondistill.core.maps import boxes_to_masks
from visiondistill.core.saliency import SaliencyAdapter, register_saliency_adapter

__all__ = ["BoxScoreTarget", "DetectionSaliencyAdapter", "DetectionScores", "draw_boxes", "shown_boxes"]


def _is_dense_detection(output: object) -> bool:
    """Whether ``output`` is a dense detector output (a `visiondistill.models.DetectorOutput` or alike)."""
    return all(hasattr(output, name) for name in ("cls_logits", "bbox_ctrness", "decoded_boxes"))


#: Box colours (RGB in [0, 1]): ground truth, teacher, student.
TRUE_COLOR, TEACHER_COLOR, STUDENT_COLOR = (0.1, 0.9, 0.1), (1.0, 0.2, 0.2), (0.2, 0.5, 1.0)


class DetectionScores(nn.Module):
    """Wraps a `visiondistill.models.detectors.Detector` so that grad-cam sees one tensor per image.

    The output is ``N×A×(5 + K)``: for each location, its decoded box (xyxy pixels), its centre-ness logit and its
    ``K`` class logits — everything a `BoxScoreTarget` needs, differentiable.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    @override
    def forward(self, images: Tensor) -> Tensor:
        output = self.detector(images)
        boxes = self.detector.decode_boxes(output)
        return torch.cat([boxes, output.bbox_ctrness, output.cls_logits], dim=-1)


class BoxScoreTarget:
    """grad-cam target: ``Σ_b (IoU_b + score_b)`` over reference boxes matched by a dense prediction (see above).

    Args:
        boxes: Reference boxes ``M×4`` (xyxy pixels); ``M`` may be 0 (the target is then 0).
        labels: Their classes ``M``.
        iou_threshold: Smallest IoU of the best-overlapping prediction for a box to count.

    Example::

        >>> out = torch.zeros(2, 5 + 1)
        >>> out[0, :4] = torch.tensor([0.0, 0.0, 10.0, 10.0])
        >>> target = BoxScoreTarget(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([0]))
        >>> round(float(target(out)), 4)  # IoU 1 + sqrt(σ(0)·σ(0)) = 1.5
        1.5
    """

    def __init__(self, boxes: Tensor, labels: Tensor, iou_threshold: float = 0.5) -> None:
        self.boxes = boxes.detach().float().reshape(-1, 4)
        self.labels = labels.detach().long().reshape(-1)
        self.iou_threshold = float(iou_threshold)

    def __call__(self, output: Tensor) -> Tensor:
        """The explained scalar for one image's ``A×(5 + K)`` output."""
        total = output[:, 4:].sum() * 0.0  # keeps the graph when nothing matches
        if not len(self.boxes):
            return total
        predicted = output[:, :4]
        ious = box_iou(self.boxes.to(predicted), predicted)  # M×A
        best_iou, best = ious.max(dim=1)
        for m in range(len(self.boxes)):
            if float(best_iou[m].detach()) > self.iou_threshold:
                location = output[best[m]]
                score = torch.sqrt(torch.sigmoid(location[5 + self.labels[m]]) * torch.sigmoid(location[4]))
                total = total + best_iou[m] + score
        return total


def _targets_of(batch: Any) -> list[Mapping[str, Tensor]] | None:
    targets = batch[1] if isinstance(batch, list | tuple) and len(batch) > 1 else None
    if isinstance(targets, list | tuple) and all(isinstance(t, Mapping) and "boxes" in t for t in targets):
        return list(targets)
    return None


@register_saliency_adapter("detection")
class DetectionSaliencyAdapter(SaliencyAdapter):
    """Detection: explain the box scores of reference detections (see the module docstring).

    `predict` remembers the detections of the model it ran last (the teacher, in `GradCAMCallback`), so `targets`
    can use them. Batches are ``(images, targets)`` with ``boxes``/``labels`` per image.

    Args:
        boxes: ``"predicted"`` explains the last-predicted model's detections of the explained class (falling back
            to the true boxes of that class when it has none), ``"true"`` the true boxes of that class.
        score_threshold: Lowest score of a detection used as reference box or drawn.
        iou_threshold: See `BoxScoreTarget`.
        max_boxes: Most reference boxes per image.

    Raises:
        ValueError: For an unknown ``boxes`` or thresholds outside [0, 1].
    """

    def __init__(
        self,
        boxes: Literal["predicted", "true"] = "predicted",
        score_threshold: float = 0.5,
        iou_threshold: float = 0.5,
        max_boxes: int = 5,
    ) -> None:
        if boxes not in ("predicted", "true"):
            raise ValueError(f"DetectionSaliencyAdapter: boxes must be 'predicted' or 'true', got {boxes!r}")
        if not (0 <= score_threshold <= 1 and 0 <= iou_threshold <= 1):
            raise ValueError(
                f"DetectionSaliencyAdapter: thresholds must be in [0, 1], got score_threshold={score_threshold}, "
                f"iou_threshold={iou_threshold}"
            )
        self.boxes, self.score_threshold = boxes, float(score_threshold)
        self.iou_threshold, self.max_boxes = float(iou_threshold), int(max_boxes)
        self.detections: list[dict[str, Tensor]] | None = None  # of the model passed to `predict` last
        self.history: list[list[dict[str, Tensor]]] = []  # every `predict` of the current round
        self._round_complete = False  # `targets` ran: the next `predict` starts a new round
        self._explained: Tensor | None = None

    @override
    def cam_model(self, model: nn.Module) -> nn.Module:
        return model if isinstance(model, DetectionScores) else DetectionScores(model)

    @override
    def target_scores(self, output: Any, categories: Tensor, batch: Any) -> Tensor:
        """The box-score target of each image on a `DetectorOutput`, differentiable (for `SaliencyAlignment`).

        The same ``N×A×(5 + K)`` dense tensor as `DetectionScores` is built from the output (boxes decoded from
        the output's own points), so the score equals what `targets` explain in a CAM.
        """
        if not _is_dense_detection(output):
            return super().target_scores(output, categories, batch)
        dense = torch.cat([output.decoded_boxes(), output.bbox_ctrness, output.cls_logits], dim=-1)
        targets = self.targets(categories, batch)
        return torch.stack([target(dense[i]) for i, target in enumerate(targets)])

    @override
    @torch.no_grad()
    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        detector = model.detector if isinstance(model, DetectionScores) else model
        detections = [{k: v.detach().cpu() for k, v in d.items()} for d in detector.postprocess(detector(images))]
        if self._round_complete:
            self.history, self._round_complete = [], False
        self.detections = detections
        self.history = [*self.history[-1:], detections]
        return torch.tensor(
            [int(d["labels"][d["scores"].argmax()]) if len(d["scores"]) else -1 for d in detections], dtype=torch.long
        )

    @override
    def ground_truth(self, batch: Any) -> Tensor | None:
        targets = _targets_of(batch)
        if targets is None:
            return None
        labels = []
        for target in targets:
            boxes = target["boxes"].reshape(-1, 4)
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            labels.append(int(target["labels"][areas.argmax()]) if len(boxes) else -1)
        return torch.tensor(labels, dtype=torch.long)

    def reference_boxes(self, categories: Tensor, batch: Any) -> list[tuple[Tensor, Tensor]]:
        """Per image, the ``(boxes, labels)`` its target explains (see ``boxes``)."""
        targets = _targets_of(batch)
        references = []
        for i, category in enumerate(categories.tolist()):
            boxes, labels = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
            if self.boxes == "predicted" and self.detections is not None and i < len(self.detections):
                d = self.detections[i]
                keep = (d["labels"] == category) & (d["scores"] >= self.score_threshold)
                boxes, labels = d["boxes"][keep][: self.max_boxes], d["labels"][keep][: self.max_boxes]
            if not len(boxes) and targets is not None:
                t = targets[i]
                # The model found nothing (category -1): explain every true box.
                keep = (
                    t["labels"].cpu() == category if category >= 0 else torch.ones(len(t["labels"]), dtype=torch.bool)
                )
                boxes, labels = t["boxes"].cpu()[keep][: self.max_boxes], t["labels"].cpu()[keep][: self.max_boxes]
            references.append((boxes.float(), labels.long()))
        return references

    @override
    def targets(self, categories: Tensor, batch: Any) -> list[Callable[[Tensor], Tensor]]:
        self._explained = categories.cpu().long()
        self._round_complete = True
        return [
            BoxScoreTarget(boxes, labels, self.iou_threshold)
            for boxes, labels in self.reference_boxes(categories, batch)
        ]

    @override
    def masks(self, batch: Any, height: int, width: int) -> Tensor | None:
        targets = _targets_of(batch)
        if targets is None:
            return None
        chosen = []
        for i, target in enumerate(targets):
            boxes, labels = target["boxes"].cpu().reshape(-1, 4), target["labels"].cpu()
            if self._explained is not None and i < len(self._explained) and (labels == self._explained[i]).any():
                boxes = boxes[labels == self._explained[i]]
            chosen.append(boxes)
        return boxes_to_masks(chosen, height, width)

    def annotate(self, images: Tensor, batch: Any) -> Tensor:
        """The display images with the true boxes (green) and the boxes of this round's predictions drawn.

        In `GradCAMCallback` a round predicts with the student (blue), then with the teacher (red) when there is one.
        """
        targets = _targets_of(batch)
        if targets is not None:
            images = draw_boxes(images, [t["boxes"] for t in targets], TRUE_COLOR)
        colors = [STUDENT_COLOR, TEACHER_COLOR]
        for detections, color in zip(self.history, colors, strict=False):
            images = draw_boxes(
                images, [shown_boxes(d, self.score_threshold, self.max_boxes) for d in detections], color
            )
        return images


def draw_boxes(images: Tensor, boxes_per_image: Sequence[Tensor], color: Sequence[float]) -> Tensor:
    """Draws 1-pixel box outlines onto images ``N×C×H×W`` in [0, 1] (a copy; grayscale images become RGB).

    Args:
        images: The images.
        boxes_per_image: One ``M×4`` xyxy tensor (pixels) per image.
        color: RGB in [0, 1].

    Returns:
        The images with the boxes drawn, ``N×3×H×W``.

    Example::

        >>> drawn = draw_boxes(torch.zeros(1, 1, 8, 8), [torch.tensor([[2.0, 2.0, 6.0, 6.0]])], (1.0, 0.0, 0.0))
        >>> drawn.shape, int(drawn[0, 0].sum())
        (torch.Size([1, 3, 8, 8]), 12)
    """
    out = images.detach().float().cpu().clone()
    if out.shape[1] == 1:
        out = out.expand(-1, 3, -1, -1).clone()
    _, _, height, width = out.shape
    value = torch.tensor(color, dtype=out.dtype).view(3, 1)
    for i, boxes in enumerate(boxes_per_image):
        for x0, y0, x1, y1 in boxes.detach().cpu().reshape(-1, 4).tolist():
            left, top = min(max(int(round(x0)), 0), width - 1), min(max(int(round(y0)), 0), height - 1)
            right, bottom = min(max(int(round(x1)) - 1, left), width - 1), min(max(int(round(y1)) - 1, top), height - 1)
            out[i, :, top, left : right + 1] = value
            out[i, :, bottom, left : right + 1] = value
            out[i, :, top : bottom + 1, left] = value
            out[i, :, top : bottom + 1, right] = value
    return out


def shown_boxes(detections: Mapping[str, Tensor], score_threshold: float = 0.5, max_boxes: int = 5) -> Tensor:
    """The boxes worth drawing: score at least ``score_threshold``, class-agnostic NMS at IoU 0.5, the best few.

    FCOS's class-wise NMS keeps one box per class on an ambiguous object; drawing them all hides the picture.
    """
    keep = detections["scores"] >= score_threshold
    boxes, scores = detections["boxes"][keep], detections["scores"][keep]
    return boxes[nms(boxes.float(), scores.float(), 0.5)[:max_boxes]]
