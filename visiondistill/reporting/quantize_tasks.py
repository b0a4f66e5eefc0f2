"""The task-specific parts of ``visiondistill export --quantize int8`` (`visiondistill.reporting.quantize`).

Per task: which graph nodes stay in fp32, what "the same prediction" means when INT8 is compared with fp32, and —
for detection — the test loop on the exported tensors.

- **Classification, segmentation**: the whole graph is quantized; a prediction is the argmax over dimension 1 (the
  class of an image, or of each pixel).
- **Multi-task** (`visiondistill.tasks.MultiTaskModule`): the whole graph is quantized; its outputs are the heads
  (``cls``, ``seg``), and agreement is counted per head as for classification and segmentation.
- **Keypoints**: the whole graph is quantized; the exported heatmaps go through the task's own test loop (flip test,
  sub-pixel decoding, PCK and OKS AP) in place of the student. INT8 agrees on a keypoint when the peak of its
  heatmap is within one heatmap pixel (one stride of the input) of fp32's: on the flat heatmaps of a barely trained
  student, neighbouring pixels differ by less than an 8-bit step.
- **Detection**: the exported graph (`visiondistill.reporting.export`) returns every location's decoded box and FCOS
  score. The network (backbone, FPN, head) is quantized; the nodes outside it — the anchor points, the box decoding
  (anchor ± stride · distance) and the score ``sqrt(sigmoid(class) · sigmoid(centre-ness))`` — are excluded
  (``nodes_to_exclude``) and stay fp32: they are a few elementwise operations on pixel coordinates and probabilities,
  where 8-bit steps (a quarter pixel over a 64-px image, 1/255 of a score) would move boxes and scores that the score
  threshold, NMS and the IoU thresholds of mAP then read, for no speed gain. Score threshold, top-k and class-wise
  NMS run outside the graph (`postprocess`), as torchvision FCOS's ``postprocess_detections`` does them, and the
  task's own metric (`visiondistill.tasks.detection.detection_map`, COCO mAP) scores the result. A prediction is a
  detection (class and box); agreement is the smaller of the shares of fp32 detections that INT8 repeats (same
  class, IoU >= 0.5) and of INT8 detections that fp32 makes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

from visiondistill.core.protocol import batch_inputs
from visiondistill.reporting.export import ExportError
from visiondistill.tasks.detection import detection_map

__all__ = [
    "EXCLUDED_WHY",
    "agreement_counts",
    "detection_metrics",
    "heatmap_peaks",
    "nodes_to_exclude",
    "postprocess",
]

#: Why each task's excluded nodes stay fp32 (the summary's note).
EXCLUDED_WHY = {
    "detection": (
        "the anchor points, box decoding and FCOS score fusion (the nodes outside /detector/, and those of "
        "/detector/anchor_generator/) stay fp32: elementwise operations on pixel coordinates and scores, which the "
        "score threshold, NMS and mAP read"
    ),
}

#: IoU at which an INT8 detection repeats an fp32 one (with the same class).
MATCH_IOU = 0.5


def nodes_to_exclude(task: str, onnx_path: Any) -> list[str]:
    """The nodes of an exported graph that static quantization leaves in fp32 (see the module docstring).

    Args:
        task: The export spec's task name.
        onnx_path: The graph to be quantized (after ``quant_pre_process``, which keeps the exporter's node names).

    Returns:
        Node names; empty for every task but detection.
    """
    if task != "detection":
        return []
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    return [
        node.name
        for node in graph.node
        if not node.name.startswith("/detector/") or node.name.startswith("/detector/anchor_generator/")
    ]


def agreement_counts(
    task: str, want: Sequence[np.ndarray], got: Sequence[np.ndarray], detector: Any = None, size: Any = None
) -> tuple:
    """How many predictions of a batch INT8 (``got``) shares with fp32 (``want``), out of how many.

    Args:
        task: The task name.
        want: The fp32 graph's outputs on a batch.
        got: The INT8 graph's outputs on the same batch.
        detector: For detection, the rebuilt torch detector (its post-processing settings).
        size: For detection, ``(H, W)`` of the batch's images.

    Returns:
        ``(agreeing, total)``; for detection ``total`` is a pair (fp32 detections, INT8 detections) and ``agreeing``
        the pair of matched counts in each direction; for the multi-task student one count per output (head), in
        the graph's order.
    """
    if task == "detection":
        first, second = postprocess(detector, *want[:2], size), postprocess(detector, *got[:2], size)
        return (_matched(first, second), _matched(second, first)), (
            sum(len(d["labels"]) for d in first),
            sum(len(d["labels"]) for d in second),
        )
    if task == "keypoints":
        first, second = heatmap_peaks(want[0]), heatmap_peaks(got[0])
        return int((np.abs(first - second).max(axis=-1) <= 1).sum()), first.shape[0] * first.shape[1]
    if task == "multitask":  # one count per head (graph output), each the class of an image or of each pixel
        counts = [agreement_counts("", [first], [second]) for first, second in zip(want, got, strict=True)]
        return tuple(agreeing for agreeing, _ in counts), tuple(total for _, total in counts)
    predicted = [want[0].argmax(axis=1), got[0].argmax(axis=1)]
    return int((predicted[0] == predicted[1]).sum()), predicted[0].size


def heatmap_peaks(heatmaps: np.ndarray) -> np.ndarray:
    """The ``(row, column)`` of the highest pixel of each heatmap, ``N×K×2``."""
    flat = heatmaps.reshape(*heatmaps.shape[:2], -1).argmax(axis=-1)
    return np.stack(np.unravel_index(flat, heatmaps.shape[-2:]), axis=-1)


def _matched(reference: list[dict[str, Tensor]], other: list[dict[str, Tensor]]) -> int:
    """Detections of ``reference`` with a detection of ``other`` in the same image, of the same class, IoU >= 0.5."""
    count = 0
    for ref, oth in zip(reference, other, strict=True):
        if not len(ref["labels"]) or not len(oth["labels"]):
            continue
        overlaps = box_iou(ref["boxes"], oth["boxes"]) * (ref["labels"][:, None] == oth["labels"][None, :])
        count += int((overlaps.max(dim=1).values >= MATCH_IOU).sum())
    return count


def postprocess(
    detector: Any, boxes: np.ndarray | Tensor, scores: np.ndarray | Tensor, size: tuple[int, int]
) -> list[dict[str, Tensor]]:
    """Detections per image from the exported ``boxes`` (``N×A×4``) and ``scores`` (``N×A×K``).

    The steps and settings of torchvision FCOS's ``postprocess_detections`` (`visiondistill.models.Detector`): per
    FPN level, the scores above ``score_thresh``, their ``topk_candidates`` best, boxes clipped to the image; then
    class-wise NMS at ``nms_thresh`` and the ``detections_per_img`` best.

    Args:
        detector: The rebuilt `Detector` (post-processing settings and the number of locations of each level).
        boxes: Decoded boxes of every location, xyxy pixels.
        scores: FCOS scores of every location and class.
        size: ``(H, W)`` of the images.

    Returns:
        One dict per image with ``boxes``, ``scores`` and ``labels``, as `Detector.postprocess` returns them.
    """
    boxes, scores = torch.as_tensor(np.asarray(boxes)), torch.as_tensor(np.asarray(scores))
    levels = _levels(detector, size, boxes.shape[1])
    results = []
    for image_boxes, image_scores in zip(boxes, scores, strict=True):
        kept_boxes, kept_scores, kept_labels = [], [], []
        for level_boxes, level_scores in zip(image_boxes.split(levels), image_scores.split(levels), strict=True):
            flat = level_scores.flatten()
            candidates = torch.where(flat > detector.score_thresh)[0]
            top, order = flat[candidates].topk(min(detector.topk_candidates, candidates.numel()))
            candidates = candidates[order]
            kept_boxes.append(clip_boxes_to_image(level_boxes[candidates // level_scores.shape[-1]], size))
            kept_scores.append(top)
            kept_labels.append(candidates % level_scores.shape[-1])
        image_boxes, image_scores = torch.cat(kept_boxes), torch.cat(kept_scores)
        labels = torch.cat(kept_labels)
        keep = batched_nms(image_boxes, image_scores, labels, detector.nms_thresh)[: detector.detections_per_img]
        results.append({"boxes": image_boxes[keep], "scores": image_scores[keep], "labels": labels[keep]})
    return results


def _levels(detector: Any, size: tuple[int, int], locations: int) -> list[int]:
    """The locations of each FPN level behind ``locations`` exported locations of ``size`` images."""
    with torch.no_grad():
        output = detector(torch.zeros(1, _channels(detector), *size))
    if sum(output.num_anchors_per_level) != locations:
        raise ExportError(
            f"the exported graph has {locations} locations but the detector has {sum(output.num_anchors_per_level)} "
            f"at {size[0]}×{size[1]}; measure it at the image size it was exported at"
        )
    return list(output.num_anchors_per_level)


def _channels(detector: Any) -> int:
    first = next(module for module in detector.backbone.modules() if isinstance(module, torch.nn.Conv2d))
    return int(first.in_channels)


def detection_metrics(session: Any, detector: Any, datamodule: Any, class_names: Sequence[str]) -> dict[str, float]:
    """The detection task's test metrics of an exported detector's onnxruntime session on the test split.

    The keys are those of `visiondistill.tasks.DetectionTask`'s test loop: ``test/map``, ``test/map_50``,
    ``test/map_75`` and ``test/map/<class>``.

    Raises:
        ExportError: When the test split has no images.
    """
    datamodule.setup("test")
    metric, name, seen = detection_map(), session.get_inputs()[0].name, 0
    for batch in datamodule.test_dataloader():
        images = batch_inputs(batch)
        boxes, scores = session.run(None, {name: images.numpy().astype(np.float32)})[:2]
        targets = [{"boxes": t["boxes"], "labels": t["labels"].long()} for t in batch[1]]
        metric.update(postprocess(detector, boxes, scores, tuple(images.shape[-2:])), targets)
        seen += images.shape[0]
    if not seen:
        raise ExportError("the run's test split has no images to measure the INT8 model on")
    result = metric.compute()
    metrics = {f"test/{key}": float(result[key]) for key in ("map", "map_50", "map_75")}
    for label, value in zip(result["classes"].flatten().tolist(), result["map_per_class"].flatten(), strict=False):
        if 0 <= label < len(class_names):
            metrics[f"test/map/{class_names[label]}"] = float(value)
    return metrics
