"""Tiny COCO-format detection data and detector specs shared by tests of several packages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visiondistill.models.detectors import DetectorSpec

#: FCOS on timm's test_resnet with a narrow FPN: ~0.1 M parameters, fast at 64 px.
TINY_STUDENT = DetectorSpec(backbone="test_resnet", fpn_channels=16, head_convs=1)
TINY_TEACHER = DetectorSpec(backbone="test_resnet", fpn_channels=32, head_convs=1)
CATEGORIES = [{"id": 1, "name": "bright"}, {"id": 2, "name": "dark"}]


def write_coco(
    root: Path,
    split: str,
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    categories: list[dict[str, Any]] | None = None,
    size: int = 64,
) -> Path:
    """Writes grey PNGs for ``images`` and their JSON in the layout `CocoDetection` reads; returns the JSON path."""
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    for entry in images:
        Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(image_dir / entry["file_name"])
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"images": images, "annotations": annotations, "categories": categories or CATEGORIES}
    path.write_text(json.dumps(content, indent=1))
    return path


def square_split(root: Path, split: str, n: int, seed: int, size: int = 64) -> None:
    """``n`` images with one or two squares each: category 1 bright, 2 dark, boxes exact; one image left empty."""
    rng = np.random.default_rng(seed)
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n):
        array = np.full((size, size, 3), 128, np.uint8)
        count = 0 if i == n - 1 else 1 + i % 2
        for _ in range(count):
            category = int(rng.integers(1, 3))
            side = int(rng.integers(12, 28))
            x, y = (int(v) for v in rng.integers(0, size - side, 2))
            array[y : y + side, x : x + side] = 250 if category == 1 else 10
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": category,
                    "bbox": [x, y, side, side],
                    "area": side * side,
                    "iscrowd": 0,
                }
            )
        name = f"{i:03d}.png"
        Image.fromarray(array).save(image_dir / name)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))


# Non-square images (96 wide, 64 high) and boxes with x != y and w != h: reading [x, y, w, h] in any other order
# gives other boxes. COCO ids 4 and 9 = our labels 0 and 1.
WIDE_IMAGES = {1: [(9, [6, 20, 30, 12]), (4, [50, 3, 8, 40])], 2: [(4, [70, 10, 24, 50]), (9, [2, 41, 44, 9])]}


def write_wide_coco(root: Path, split: str = "val") -> Path:
    """Writes ``WIDE_IMAGES`` in the layout `CocoDetection` reads; returns the JSON path."""
    (root / "images" / split).mkdir(parents=True)
    images, annotations = [], []
    for image_id, objects in WIDE_IMAGES.items():
        Image.fromarray(np.full((64, 96, 3), 128, np.uint8)).save(root / "images" / split / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 96, "height": 64})
        for category, bbox in objects:
            annotation = {"id": len(annotations) + 1, "image_id": image_id, "category_id": category, "bbox": bbox}
            annotations.append({**annotation, "area": bbox[2] * bbox[3], "iscrowd": 0})
    categories = [{"id": 9, "name": "nine"}, {"id": 4, "name": "four"}]
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path
