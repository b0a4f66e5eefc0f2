"""Our detection mAP (torchmetrics MeanAveragePrecision as DetectionTask uses it) against pycocotools' COCOeval."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from visiondistill.tasks.detection import box_map_vs_teacher, detection_map

# Three images, three categories (COCO ids 1, 2, 3 = our labels 0, 1, 2); xywh pixels.
GROUND_TRUTH = {
    1: [(1, [10, 10, 20, 20]), (2, [40, 40, 15, 10])],
    2: [(1, [5, 5, 30, 30]), (1, [50, 50, 10, 10]), (3, [20, 30, 25, 20])],
    3: [],  # an image without objects: every detection on it is a false positive
}
DETECTIONS = {
    1: [(1, [11, 9, 20, 21], 0.9), (2, [38, 41, 15, 10], 0.8), (3, [10, 10, 20, 20], 0.3), (1, [60, 5, 10, 10], 0.2)],
    2: [(1, [6, 6, 28, 29], 0.95), (1, [51, 49, 9, 12], 0.6), (3, [22, 28, 20, 24], 0.7), (2, [0, 0, 5, 5], 0.4)],
    3: [(1, [30, 30, 10, 10], 0.5), (3, [0, 0, 64, 64], 0.1)],
}


def _cocoeval() -> COCOeval:
    images = [{"id": i, "width": 64, "height": 64, "file_name": f"{i}.png"} for i in GROUND_TRUTH]
    annotations = []
    for image_id, objects in GROUND_TRUTH.items():
        for category, (x, y, w, h) in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": c} for c in (1, 2, 3)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(
            [
                {"image_id": image_id, "category_id": c, "bbox": box, "score": score}
                for image_id, objects in DETECTIONS.items()
                for c, box, score in objects
            ]
        )
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _xyxy(box: list[float]) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


def _ours() -> dict[str, torch.Tensor]:
    metric = detection_map()
    for image_id in GROUND_TRUTH:
        objects, detections = GROUND_TRUTH[image_id], DETECTIONS[image_id]
        target = {
            "boxes": torch.tensor([_xyxy(b) for _, b in objects], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([c - 1 for c, _ in objects], dtype=torch.long),
        }
        prediction = {
            "boxes": torch.tensor([_xyxy(b) for _, b, _ in detections], dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor([s for _, _, s in detections], dtype=torch.float32),
            "labels": torch.tensor([c - 1 for c, _, _ in detections], dtype=torch.long),
        }
        metric.update([prediction], [target])
    return metric.compute()


def test_map_equals_cocoeval():
    ours, reference = _ours(), _cocoeval()
    stats = reference.stats  # [mAP, mAP@50, mAP@75, small, medium, large, AR@1, AR@10, AR@100, ...]
    assert float(ours["map"]) == pytest.approx(stats[0], abs=1e-4)
    assert float(ours["map_50"]) == pytest.approx(stats[1], abs=1e-4)
    assert float(ours["map_75"]) == pytest.approx(stats[2], abs=1e-4)
    assert float(ours["mar_100"]) == pytest.approx(stats[8], abs=1e-4)
    # The fixture is not trivial: neither perfect nor empty.
    assert 0.2 < stats[0] < 0.9


def test_per_class_map_equals_cocoeval():
    ours, reference = _ours(), _cocoeval()
    precision = reference.eval["precision"]  # T×R×K×A×M; area "all", 100 detections
    for k, category in enumerate((1, 2, 3)):
        values = precision[:, :, k, 0, -1]
        expected = float(np.mean(values[values > -1])) if (values > -1).any() else -1.0
        label = category - 1
        position = ours["classes"].tolist().index(label)
        assert float(ours["map_per_class"][position]) == pytest.approx(expected, abs=1e-4)


def _detections(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


def test_box_map_vs_teacher_takes_teacher_detections_at_or_above_the_threshold_as_truth():
    # Teacher: two class-0 boxes at scores 0.9 and exactly 0.5 (both truth at the default threshold), one class-1
    # box at 0.3 (not truth). The student finds both class-0 boxes, one at IoU 100/120 (a hit at 0.5, not at 0.95).
    teacher = [_detections([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0.9, 0.5, 0.3], [0, 0, 1])]
    student = [_detections([[0, 0, 10, 12], [20, 20, 30, 30]], [0.7, 0.8], [0, 0])]
    assert box_map_vs_teacher(student, teacher) == pytest.approx(1.0)  # map@50, not the 0.50:0.95 mean
    # At 0.2 the class-1 box is truth too and the student missed it: class 1 scores 0.
    assert box_map_vs_teacher(student, teacher, score_threshold=0.2) == pytest.approx(0.5)
    # Above 0.5 the box at exactly 0.5 is no longer truth: the student's best-scored box is a false positive.
    assert box_map_vs_teacher(student, teacher, score_threshold=0.6) == pytest.approx(0.5, abs=0.02)
    # Right boxes, wrong class: nothing matches.
    wrong_class = [_detections([[0, 0, 10, 10], [20, 20, 30, 30]], [0.7, 0.8], [1, 1])]
    assert box_map_vs_teacher(wrong_class, teacher) == pytest.approx(0.0)
