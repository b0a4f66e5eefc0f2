"""Detection mAP of ground truth read from a COCO file by our loader, against pycocotools' COCOeval on that file."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from visiondistill.data.detection import CocoDetectionDataset
from visiondistill.tasks.detection import detection_map

from ..support.detection import write_wide_coco


def _xyxy(box: list[float]) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


# Detections on `write_wide_coco`'s two 96x64 images: (COCO category id, [x, y, w, h], score)
WIDE_DETECTIONS = {
    1: [(9, [7, 21, 29, 12], 0.9), (4, [50, 5, 8, 36], 0.8), (4, [60, 30, 20, 20], 0.3)],
    2: [(4, [68, 12, 25, 47], 0.85), (9, [3, 40, 42, 10], 0.6), (9, [10, 5, 20, 20], 0.4)],
}


def test_map_of_ground_truth_read_by_our_loader_equals_cocoeval_on_the_same_file(tmp_path):
    # The ground truth goes through CocoDetectionDataset (non-square images, boxes with x != y and w != h), so a
    # loader that misreads COCO's [x, y, w, h] moves the boxes away from the detections and the mAP away from COCOeval.
    path = write_wide_coco(tmp_path)
    dataset = CocoDetectionDataset(path, tmp_path / "images" / "val")
    metric = detection_map()
    for index, entry in enumerate(dataset.images):
        detections = WIDE_DETECTIONS[entry["id"]]
        prediction = {
            "boxes": torch.tensor([_xyxy(b) for _, b, _ in detections], dtype=torch.float32),
            "scores": torch.tensor([s for _, _, s in detections]),
            "labels": torch.tensor([dataset.category_ids.index(c) for c, _, _ in detections]),
        }
        target = dataset[index][1]
        metric.update([prediction], [{"boxes": target["boxes"], "labels": target["labels"]}])
    ours = metric.compute()

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        dt = gt.loadRes(
            [
                {"image_id": image_id, "category_id": c, "bbox": box, "score": score}
                for image_id, detections in WIDE_DETECTIONS.items()
                for c, box, score in detections
            ]
        )
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    assert 0.2 < stats[0] < 0.9  # neither perfect nor empty
    assert float(ours["map"]) == pytest.approx(stats[0], abs=1e-4)
    assert float(ours["map_50"]) == pytest.approx(stats[1], abs=1e-4)
    assert float(ours["map_75"]) == pytest.approx(stats[2], abs=1e-4)
