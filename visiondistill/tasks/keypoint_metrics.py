"""Keypoint decoding and metrics: heatmap decoding with sub-pixel refinement, PCK and OKS-based AP.

- `decode_heatmaps`: argmax of each heatmap refined by a quarter-pixel shift towards the higher neighbour
  (SimpleBaseline) or by DARK's Taylor expansion of the log-heatmap.
- `pck`/`PCK`: Percentage of Correct Keypoints — a labelled keypoint is correct when the prediction lies within
  ``threshold · box size`` of it (box size = the longer side of the instance's box).
- `keypoint_oks`/`keypoint_ap`/`KeypointAP`: Object Keypoint Similarity and the COCO keypoint AP over OKS
  thresholds 0.50:0.05:0.95, transcribed from ``pycocotools.cocoeval.COCOeval`` (``iouType="keypoints"``, area range
  "all", at most 20 detections per image, 101 recall points), so it equals COCOeval on the same predictions.

Functional cores are plain tensor/numpy functions; the `Metric` classes only accumulate and call them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from typing_extensions import override

__all__ = ["PCK", "KeypointAP", "decode_heatmaps", "keypoint_ap", "keypoint_oks", "pck", "pck_counts"]

_OKS_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
_RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1)
_MAX_DETECTIONS = 20


def decode_heatmaps(
    heatmaps: Tensor, stride: float = 1.0, method: str = "quarter", sigma: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Keypoint locations from heatmaps: argmax, then a sub-pixel refinement.

    ``"quarter"`` shifts the argmax a quarter pixel towards the higher neighbour on each axis where both neighbours
    exist (SimpleBaseline). ``"dark"`` (Zhang et al. 2020, DARK) smooths each heatmap with a Gaussian of ``sigma``
    (rescaled to its original peak), takes its logarithm and moves the argmax by one Newton step of its second-order
    Taylor expansion, ``−H⁻¹∇``, where the derivatives exist (two pixels from the border); on an exact Gaussian it
    recovers the centre. Heatmap pixel ``j`` is centred on input coordinate ``(j + 0.5) · stride`` (continuous pixel
    coordinates).

    Args:
        heatmaps: ``N×K×h×w``.
        stride: Input pixels per heatmap pixel.
        method: ``"quarter"`` or ``"dark"``.
        sigma: Smoothing of ``"dark"``, in heatmap pixels (the target Gaussian's).

    Returns:
        ``(coords, scores)``: ``N×K×2`` ``(x, y)`` in input pixels and the ``N×K`` peak values.

    Raises:
        ValueError: For an unknown method.

    Example::

        >>> h = torch.zeros(1, 1, 4, 4); h[0, 0, 1, 2] = 1.0; h[0, 0, 1, 3] = 0.5
        >>> decode_heatmaps(h, stride=4)[0].tolist()
        [[[11.0, 6.0]]]
    """
    if method not in ("quarter", "dark"):
        raise ValueError(f"decoding method must be 'quarter' or 'dark', got {method!r}")
    if method == "dark":
        return _decode_dark(heatmaps, stride, sigma)
    n, k, height, width = heatmaps.shape
    flat = heatmaps.detach().reshape(n, k, -1)
    scores, index = flat.max(dim=-1)
    x, y = (index % width).long(), torch.div(index, width, rounding_mode="floor").long()
    maps = heatmaps.detach().reshape(n * k, height, width)
    rows = torch.arange(n * k, device=heatmaps.device)
    xf, yf = x.reshape(-1), y.reshape(-1)
    inner_x = (xf > 0) & (xf < width - 1)
    inner_y = (yf > 0) & (yf < height - 1)
    right = maps[rows, yf, (xf + 1).clamp(max=width - 1)]
    left = maps[rows, yf, (xf - 1).clamp(min=0)]
    below = maps[rows, (yf + 1).clamp(max=height - 1), xf]
    above = maps[rows, (yf - 1).clamp(min=0), xf]
    dx = torch.where(inner_x, 0.25 * torch.sign(right - left), torch.zeros_like(right))
    dy = torch.where(inner_y, 0.25 * torch.sign(below - above), torch.zeros_like(below))
    coords = torch.stack([xf.float() + dx + 0.5, yf.float() + dy + 0.5], dim=-1) * stride
    return coords.reshape(n, k, 2), scores


def _decode_dark(heatmaps: Tensor, stride: float, sigma: float) -> tuple[Tensor, Tensor]:
    n, k, height, width = heatmaps.shape
    maps = heatmaps.detach().double().reshape(n * k, 1, height, width)
    scores, index = maps.flatten(1).max(dim=-1)
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    smooth = F.conv2d(F.pad(maps, (radius, radius, 0, 0)), kernel.view(1, 1, 1, -1))
    smooth = F.conv2d(F.pad(smooth, (0, 0, radius, radius)), kernel.view(1, 1, -1, 1))
    peak = smooth.flatten(1).amax(dim=-1).clamp(min=1e-10)
    smooth = (smooth * (scores.clamp(min=0) / peak).view(-1, 1, 1, 1)).clamp(min=1e-10).log()[:, 0]
    x, y = index % width, torch.div(index, width, rounding_mode="floor")
    coords = torch.stack([x, y], dim=-1).to(maps.dtype)
    inner = (x > 1) & (x < width - 2) & (y > 1) & (y < height - 2)
    rows = torch.arange(n * k, device=maps.device)
    xc, yc = x.clamp(2, width - 3), y.clamp(2, height - 3)

    def at(dy: int, dx: int) -> Tensor:
        return smooth[rows, yc + dy, xc + dx]

    gradient = torch.stack([0.5 * (at(0, 1) - at(0, -1)), 0.5 * (at(1, 0) - at(-1, 0))], dim=-1)
    dxx = 0.25 * (at(0, 2) - 2 * at(0, 0) + at(0, -2))
    dyy = 0.25 * (at(2, 0) - 2 * at(0, 0) + at(-2, 0))
    dxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1))
    determinant = dxx * dyy - dxy**2
    usable = inner & (determinant.abs() > 1e-12)
    safe = torch.where(usable, determinant, torch.ones_like(determinant))
    offset_x = -(dyy * gradient[:, 0] - dxy * gradient[:, 1]) / safe  # −H⁻¹∇ with H = [[dxx, dxy], [dxy, dyy]]
    offset_y = -(-dxy * gradient[:, 0] + dxx * gradient[:, 1]) / safe
    offset = torch.stack([offset_x, offset_y], dim=-1).clamp(-1.0, 1.0)
    coords = coords + torch.where(usable[:, None], offset, torch.zeros_like(offset))
    return ((coords + 0.5) * stride).float().reshape(n, k, 2), scores.to(heatmaps.dtype).reshape(n, k)


def pck_counts(predicted: Tensor, keypoints: Tensor, box_size: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Correct and labelled keypoint counts for PCK.

    Args:
        predicted: ``N×K×2`` predicted ``(x, y)``.
        keypoints: ``N×K×3`` true ``(x, y, v)``; keypoints with ``v = 0`` are not counted.
        box_size: ``N`` normalisers (the box's longer side), in the same units.
        threshold: Fraction of the box size (e.g. 0.05, 0.1).

    Returns:
        ``(correct, labelled)`` as integer scalars.
    """
    labelled = keypoints[..., 2] > 0
    distance = (predicted.float() - keypoints[..., :2].float()).norm(dim=-1)
    correct = (distance <= threshold * box_size.float().view(-1, 1)) & labelled
    return correct.sum(), labelled.sum()


def pck(predicted: Tensor, keypoints: Tensor, box_size: Tensor, threshold: float = 0.1) -> Tensor:
    """Percentage (as a fraction) of labelled keypoints predicted within ``threshold · box size``.

    Example::

        >>> truth = torch.tensor([[[10.0, 10.0, 2.0], [20.0, 20.0, 0.0]]])
        >>> float(pck(torch.tensor([[[10.0, 14.0], [0.0, 0.0]]]), truth, torch.tensor([50.0]), 0.1))
        1.0
    """
    correct, labelled = pck_counts(predicted, keypoints, box_size, threshold)
    return correct.float() / labelled.clamp(min=1).float()


class PCK(Metric):
    """PCK at one threshold, accumulated over batches (see `pck`).

    Args:
        threshold: Fraction of the box size, in (0, 1].

    Raises:
        ValueError: For a threshold outside (0, 1].

    Example::

        >>> metric = PCK(0.05)
        >>> metric.update(torch.tensor([[[10.0, 12.0]]]), torch.tensor([[[10.0, 10.0, 2.0]]]), torch.tensor([50.0]))
        >>> float(metric.compute())
        1.0
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, threshold: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0 < threshold <= 1:
            raise ValueError(f"PCK threshold must be in (0, 1], got {threshold!r}")
        self.threshold = float(threshold)
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("labelled", torch.tensor(0), dist_reduce_fx="sum")

    @override
    def update(self, predicted: Tensor, keypoints: Tensor, box_size: Tensor) -> None:
        correct, labelled = pck_counts(predicted, keypoints, box_size, self.threshold)
        self.correct += correct
        self.labelled += labelled

    @override
    def compute(self) -> Tensor:
        return self.correct.float() / self.labelled.clamp(min=1).float()


def keypoint_oks(
    predicted: np.ndarray, keypoints: np.ndarray, areas: np.ndarray, boxes: np.ndarray, sigmas: np.ndarray
) -> np.ndarray:
    """Object Keypoint Similarity between every prediction and every ground truth of one image (COCOeval's).

    ``OKS = mean over labelled keypoints of exp(−d² / (2 · area · (2σ_k)²))``; a ground truth with no labelled
    keypoint uses, as COCOeval does, the distance of each predicted point to its box enlarged to three times its size.

    Args:
        predicted: ``D×K×2``.
        keypoints: ``G×K×3``.
        areas: ``G`` object areas.
        boxes: ``G×4`` boxes ``[x, y, w, h]``.
        sigmas: ``K`` per-keypoint constants ``σ_k``.

    Returns:
        ``D×G`` OKS values.
    """
    variances = (np.asarray(sigmas, dtype=np.float64) * 2) ** 2
    oks = np.zeros((len(predicted), len(keypoints)))
    for j, (truth, area, box) in enumerate(zip(keypoints, areas, boxes, strict=True)):
        xg, yg, vg = truth[:, 0], truth[:, 1], truth[:, 2]
        labelled = vg > 0
        x0, x1 = box[0] - box[2], box[0] + box[2] * 2
        y0, y1 = box[1] - box[3], box[1] + box[3] * 2
        for i, points in enumerate(predicted):
            xd, yd = points[:, 0], points[:, 1]
            if labelled.any():
                dx, dy = xd - xg, yd - yg
            else:
                zero = np.zeros(len(xd))
                dx = np.maximum(zero, x0 - xd) + np.maximum(zero, xd - x1)
                dy = np.maximum(zero, y0 - yd) + np.maximum(zero, yd - y1)
            e = (dx**2 + dy**2) / variances / (area + np.spacing(1)) / 2
            if labelled.any():
                e = e[labelled]
            oks[i, j] = np.sum(np.exp(-e)) / e.shape[0]
    return oks


def keypoint_ap(
    image_ids: Sequence[int],
    keypoints: np.ndarray,
    areas: np.ndarray,
    boxes: np.ndarray,
    predicted: np.ndarray,
    scores: np.ndarray,
    sigmas: Sequence[float],
    prediction_image_ids: Sequence[int] | None = None,
) -> float:
    """COCO keypoint AP (OKS 0.50:0.05:0.95, area "all", 20 detections per image), as ``COCOeval`` computes it.

    Ground truths with no labelled keypoint are ignored (they neither count as misses nor penalise a match).

    Args:
        image_ids: ``G`` image ids of the ground truths.
        keypoints: ``G×K×3`` true keypoints (image coordinates).
        areas: ``G`` areas.
        boxes: ``G×4`` boxes ``[x, y, w, h]``.
        predicted: ``D×K×2`` predicted keypoints (image coordinates).
        scores: ``D`` prediction scores.
        sigmas: ``K`` OKS constants.
        prediction_image_ids: ``D`` image ids of the predictions; ``None`` when prediction ``i`` belongs to ground
            truth ``i``'s image (top-down evaluation on the true boxes).

    Returns:
        The AP, or −1 when no ground truth has a labelled keypoint (COCOeval's value for "no data").

    Example::

        >>> truth = np.array([[[10.0, 10.0, 2.0], [20.0, 10.0, 2.0]]])
        >>> ap = keypoint_ap([1], truth, np.array([100.0]), np.array([[8, 8, 14, 4]]), truth[..., :2],
        ...                  np.array([0.9]), [0.05, 0.05])
        >>> round(ap, 6)
        1.0
    """
    image_ids = np.asarray(image_ids, dtype=np.int64)
    prediction_ids = image_ids if prediction_image_ids is None else np.asarray(prediction_image_ids, dtype=np.int64)
    keypoints, predicted = np.asarray(keypoints, np.float64), np.asarray(predicted, np.float64)
    areas, boxes, scores = np.asarray(areas, np.float64), np.asarray(boxes, np.float64), np.asarray(scores, np.float64)
    sigmas = np.asarray(sigmas, dtype=np.float64)
    ignored = ~(keypoints[..., 2] > 0).any(axis=-1)
    thresholds = len(_OKS_THRESHOLDS)
    all_scores, all_matched, all_ignored = [], [], []
    not_ignored = 0
    for image in np.unique(np.concatenate([image_ids, prediction_ids])):  # sorted, as COCOeval's imgIds
        gt = np.flatnonzero(image_ids == image)
        dt = np.flatnonzero(prediction_ids == image)
        if len(gt) == 0 and len(dt) == 0:
            continue
        gt = gt[np.argsort(ignored[gt], kind="mergesort")]
        dt = dt[np.argsort(-scores[dt], kind="mergesort")][:_MAX_DETECTIONS]
        gt_ignored = ignored[gt]
        not_ignored += int((~gt_ignored).sum())
        oks = keypoint_oks(predicted[dt], keypoints[gt], areas[gt], boxes[gt], sigmas) if len(gt) and len(dt) else None
        gt_matched = np.zeros((thresholds, len(gt)), dtype=bool)
        dt_matched = np.zeros((thresholds, len(dt)), dtype=bool)
        dt_ignored = np.zeros((thresholds, len(dt)), dtype=bool)
        if oks is not None:
            for t, threshold in enumerate(_OKS_THRESHOLDS):
                for d in range(len(dt)):
                    best, match = min(threshold, 1 - 1e-10), -1
                    for g in range(len(gt)):
                        if gt_matched[t, g]:  # no crowds among keypoint ground truths
                            continue
                        if match > -1 and not gt_ignored[match] and gt_ignored[g]:
                            break
                        if oks[d, g] < best:
                            continue
                        best, match = oks[d, g], g
                    if match == -1:
                        continue
                    dt_ignored[t, d] = gt_ignored[match]
                    dt_matched[t, d] = True
                    gt_matched[t, match] = True
        all_scores.append(scores[dt])
        all_matched.append(dt_matched)
        all_ignored.append(dt_ignored)
    if not_ignored == 0:
        return -1.0
    order = np.argsort(-np.concatenate(all_scores), kind="mergesort")
    matched = np.concatenate(all_matched, axis=1)[:, order]
    ignore = np.concatenate(all_ignored, axis=1)[:, order]
    true_positives = np.cumsum(matched & ~ignore, axis=1).astype(np.float64)
    false_positives = np.cumsum(~matched & ~ignore, axis=1).astype(np.float64)
    precision = np.zeros((thresholds, len(_RECALL_THRESHOLDS)))
    for t in range(thresholds):
        tp, fp = true_positives[t], false_positives[t]
        recall = tp / not_ignored
        curve = tp / (fp + tp + np.spacing(1))
        for i in range(len(curve) - 1, 0, -1):  # the precision envelope
            curve[i - 1] = max(curve[i - 1], curve[i])
        positions = np.searchsorted(recall, _RECALL_THRESHOLDS, side="left")
        for r, position in enumerate(positions):
            if position < len(curve):
                precision[t, r] = curve[position]
    return float(precision.mean())


class KeypointAP(Metric):
    """COCO keypoint AP accumulated over batches (see `keypoint_ap`); one prediction per ground-truth instance.

    Args:
        sigmas: Per-keypoint OKS constants ``σ_k`` (COCO persons: 0.026 … 0.107).

    Raises:
        ValueError: For an empty or non-positive ``sigmas``.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, sigmas: Sequence[float], **kwargs) -> None:
        super().__init__(**kwargs)
        if not len(sigmas) or min(sigmas) <= 0:
            raise ValueError(f"KeypointAP needs one positive sigma per keypoint, got {list(sigmas)!r}")
        self.sigmas = [float(s) for s in sigmas]
        for name in ("image_ids", "keypoints", "areas", "boxes", "predicted", "scores"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    @override
    def update(
        self,
        image_ids: Tensor,
        keypoints: Tensor,
        areas: Tensor,
        boxes: Tensor,
        predicted: Tensor,
        scores: Tensor,
    ) -> None:
        if keypoints.shape[1] != len(self.sigmas):
            raise ValueError(f"KeypointAP has {len(self.sigmas)} sigmas but the keypoints have {keypoints.shape[1]}")
        self.image_ids.append(image_ids.long())
        self.keypoints.append(keypoints.double())
        self.areas.append(areas.double())
        self.boxes.append(boxes.double())
        self.predicted.append(predicted.double())
        self.scores.append(scores.double())

    @override
    def compute(self) -> Tensor:
        if isinstance(self.image_ids, list) and not self.image_ids:  # a list until synchronised, then a tensor
            return torch.tensor(-1.0)
        values = [dim_zero_cat(getattr(self, n)).cpu().numpy() for n in ("image_ids", "keypoints", "areas", "boxes")]
        predicted, scores = dim_zero_cat(self.predicted).cpu().numpy(), dim_zero_cat(self.scores).cpu().numpy()
        return torch.tensor(keypoint_ap(*values, predicted, scores, self.sigmas), dtype=torch.float32)
