"""COCO-format detection data: reading, bbox-aware augmentation, and every kind of bad input named clearly."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from visiondistill.data import DataError
from visiondistill.data.detection import (
    CocoDetection,
    CocoDetectionDataset,
    ShapesDetection,
    detection_collate,
    detection_transforms,
)

from ..support.detection import write_coco, write_wide_coco


def _image(i: int) -> dict:
    return {"id": i, "file_name": f"{i}.png", "width": 64, "height": 64}


def _annotation(i: int, image_id: int, bbox: list[float], category: int = 1) -> dict:
    return {"id": i, "image_id": image_id, "category_id": category, "bbox": bbox, "area": 1.0, "iscrowd": 0}


def test_reads_boxes_as_xyxy_with_contiguous_labels(tmp_path: Path):
    categories = [{"id": 7, "name": "b"}, {"id": 3, "name": "a"}]
    path = write_coco(tmp_path, "train", [_image(1)], [_annotation(1, 1, [4, 6, 10, 20], category=7)], categories)
    dataset = CocoDetectionDataset(path, tmp_path / "images" / "train")
    image, target = dataset[0]
    assert dataset.class_names == ["a", "b"] and dataset.category_ids == [3, 7]  # ascending id order
    assert image.shape == (3, 64, 64) and float(image.max()) <= 1.0
    assert target["boxes"].tolist() == [[4.0, 6.0, 14.0, 26.0]] and target["labels"].tolist() == [1]


def test_invalid_json_names_the_file_and_line(tmp_path: Path):
    path = write_coco(tmp_path, "train", [_image(1)], [])
    path.write_text('{\n  "images": [],\n  "annotations": [,]\n}')
    with pytest.raises(DataError, match=r"instances_train\.json' is not valid JSON: .* line 3, column"):
        CocoDetectionDataset(path, tmp_path / "images" / "train")


def test_missing_sections_are_named(tmp_path: Path):
    path = write_coco(tmp_path, "train", [_image(1)], [])
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="has no 'annotations', 'categories' list"):
        CocoDetectionDataset(path, tmp_path / "images" / "train")


def test_unknown_category_is_an_error_naming_the_annotation(tmp_path: Path):
    path = write_coco(tmp_path, "train", [_image(1)], [_annotation(5, 1, [0, 0, 4, 4], category=9)])
    with pytest.raises(DataError, match=r"annotation 5 \(image '1.png'\) has category_id 9.*valid ids: \[1, 2\]"):
        CocoDetectionDataset(path, tmp_path / "images" / "train")


def test_boxes_outside_the_image_are_clipped_and_counted(tmp_path: Path):
    annotations = [
        _annotation(1, 1, [-5, 10, 20, 10]),  # reaches left of the image: clipped
        _annotation(2, 1, [50, 50, 30, 30]),  # reaches past the bottom-right corner: clipped
        _annotation(3, 1, [70, 10, 5, 5]),  # entirely outside: zero area once clipped, dropped
        _annotation(4, 1, [10, 10, 0, 8]),  # zero width: dropped
        _annotation(5, 1, [10, 10, 8, 8]),  # fine
    ]
    path = write_coco(tmp_path, "train", [_image(1)], annotations)
    dataset = CocoDetectionDataset(path, tmp_path / "images" / "train")
    assert dataset.stats["clipped"] == 2 and dataset.stats["dropped"] == 2 and dataset.stats["annotations"] == 3
    boxes = dataset[0][1]["boxes"].tolist()
    assert boxes == [[0.0, 10.0, 15.0, 20.0], [50.0, 50.0, 64.0, 64.0], [10.0, 10.0, 18.0, 18.0]]


def test_boxes_outside_the_image_fail_in_error_mode(tmp_path: Path):
    path = write_coco(tmp_path, "train", [_image(1)], [_annotation(8, 1, [50, 50, 30, 30])])
    with pytest.raises(DataError, match=r"annotation 8 .* reaching outside its 64x64 image.*invalid_boxes: clip"):
        CocoDetectionDataset(path, tmp_path / "images" / "train", invalid_boxes="error")


def test_zero_area_boxes_fail_in_error_mode(tmp_path: Path):
    path = write_coco(tmp_path, "train", [_image(1)], [_annotation(3, 1, [10, 10, 5, 0])])
    with pytest.raises(DataError, match=r"annotation 3 .* zero area"):
        CocoDetectionDataset(path, tmp_path / "images" / "train", invalid_boxes="error")


def test_malformed_bbox_is_named(tmp_path: Path):
    path = write_coco(tmp_path, "train", [_image(1)], [_annotation(2, 1, [1, 2, 3])])
    with pytest.raises(DataError, match=r"annotation 2 .* bbox \[1, 2, 3\]; COCO boxes are \[x, y, width, height\]"):
        CocoDetectionDataset(path, tmp_path / "images" / "train")


def test_images_without_annotations_are_allowed_and_counted(tmp_path: Path):
    path = write_coco(tmp_path, "train", [_image(1), _image(2)], [_annotation(1, 1, [0, 0, 8, 8])])
    dataset = CocoDetectionDataset(path, tmp_path / "images" / "train", transform=detection_transforms(32, False))
    assert dataset.stats["empty_images"] == 1
    image, target = dataset[1]
    assert image.shape == (3, 32, 32) and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    images, targets = detection_collate([dataset[0], dataset[1]])
    assert images.shape == (2, 3, 32, 32) and [len(t["boxes"]) for t in targets] == [1, 0]


def test_annotation_of_an_unknown_image_is_named(tmp_path: Path):
    path = write_coco(tmp_path, "train", [_image(1)], [_annotation(4, 99, [0, 0, 8, 8])])
    with pytest.raises(DataError, match="annotation 4 refers to image id 99"):
        CocoDetectionDataset(path, tmp_path / "images" / "train")


def _shifted(dx: float) -> A.Compose:
    """The evaluation pipeline with a fixed horizontal shift before it."""
    shift = A.Affine(translate_px={"x": int(dx), "y": 0}, p=1.0)
    base = detection_transforms(64, train=False)
    return A.Compose([shift, *base.transforms], bbox_params=base.processors["bboxes"].params)


def test_augmentation_clips_boxes_leaving_the_image_and_drops_those_that_left():
    image = np.zeros((64, 64, 3), np.uint8)
    boxes = np.array([[40.0, 10.0, 60.0, 30.0], [4.0, 10.0, 20.0, 30.0]])
    out = _shifted(10)(image=image, bboxes=boxes, labels=[0, 1])
    # first box: 50..70 clipped to 50..64 (70% visible, kept); second box: 14..30, whole
    np.testing.assert_allclose(np.asarray(out["bboxes"]), [[50.0, 10.0, 64.0, 30.0], [14.0, 10.0, 30.0, 30.0]])
    out = _shifted(20)(image=image, bboxes=boxes, labels=[0, 1])
    # first box: 60..80, 20% visible < min_visibility 0.3: dropped with its label
    np.testing.assert_allclose(np.asarray(out["bboxes"]), [[24.0, 10.0, 40.0, 30.0]])
    assert list(out["labels"]) == [1]


def test_training_augmentation_keeps_boxes_inside_the_image():
    pipeline = detection_transforms(48, train=True)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for seed in range(20):
        np.random.seed(seed)
        out = pipeline(image=image, bboxes=np.array([[2.0, 2.0, 62.0, 30.0]]), labels=[0])
        boxes = np.asarray(out["bboxes"]).reshape(-1, 4)
        assert ((boxes >= 0) & (boxes <= 48)).all() and len(boxes) == len(out["labels"])


def test_coco_datamodule_batches_and_stats(coco_root: Path):
    datamodule = CocoDetection(str(coco_root), image_size=32, batch_size=4, num_workers=0)
    datamodule.setup("fit")
    images, targets = next(iter(datamodule.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and all(t["boxes"].dtype == torch.float32 for t in targets)
    assert datamodule.class_names == ["bright", "dark"] and datamodule.num_classes == 2
    assert datamodule.stats["train"]["empty_images"] == 1


def test_coco_datamodule_missing_split_names_the_layout(tmp_path: Path):
    datamodule = CocoDetection(str(tmp_path), num_workers=0)
    with pytest.raises(FileNotFoundError, match="images/<split>/ and annotations/instances_<split>.json"):
        datamodule.setup("fit")


def test_shapes_detection_generates_coco_and_reads_it(tmp_path: Path):
    datamodule = ShapesDetection(
        str(tmp_path / "shapes"), image_size=32, batch_size=4, num_workers=0, num_train=8, num_val=4, num_test=0
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert (tmp_path / "shapes" / "coco" / "annotations" / "instances_train.json").is_file()
    images, targets = next(iter(datamodule.val_dataloader()))
    assert images.shape == (4, 3, 32, 32) and datamodule.num_classes == 6
    assert all(((t["boxes"] >= 0) & (t["boxes"] <= 32)).all() for t in targets)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_seeded_augmentation_is_reproducible(coco_root: Path, num_workers: int):
    def first_batch() -> tuple[torch.Tensor, list]:
        torch.manual_seed(0)
        datamodule = CocoDetection(str(coco_root), image_size=48, batch_size=8, num_workers=num_workers, seed=3)
        datamodule.setup("fit")
        return next(iter(datamodule.train_dataloader()))

    (images_a, targets_a), (images_b, targets_b) = first_batch(), first_batch()
    assert torch.equal(images_a, images_b)
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(targets_a, targets_b, strict=True))


def test_boxes_of_non_square_images_match_pycocotools_reading(tmp_path: Path):
    path = write_wide_coco(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))  # pycocotools' own reading of the file
    dataset = CocoDetectionDataset(path, tmp_path / "images" / "val")
    datamodule = CocoDetection(str(tmp_path), image_size=48, batch_size=2, num_workers=0)
    datamodule.setup("validate")
    _, resized = next(iter(datamodule.val_dataloader()))
    for index, entry in enumerate(dataset.images):
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=entry["id"]))
        xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations)])
        labels = [dataset.category_ids.index(a["category_id"]) for a in annotations]
        image, target = dataset[index]
        assert image.shape == (3, 64, 96)
        assert torch.equal(target["boxes"], xyxy.float()) and target["labels"].tolist() == labels
        # the datamodule resizes 96x64 to 48x48: x scales by 1/2, y by 3/4
        scale = torch.tensor([48 / 96, 48 / 64, 48 / 96, 48 / 64])
        assert torch.allclose(resized[index]["boxes"], xyxy.float() * scale, atol=1e-4)
        assert resized[index]["labels"].tolist() == labels
