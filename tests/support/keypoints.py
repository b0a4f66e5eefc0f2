"""Tiny keypoint models, COCO keypoint files and the shapes keypoint set shared by tests of several packages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from PIL import Image

from visiondistill.data.keypoints import ShapesKeypoints
from visiondistill.models.keypoint_models import KeypointModelSpec

#: A small student and teacher: test_resnet up to layer3 (stride 16) with two deconvolutions -> stride 4.
TINY_STUDENT = KeypointModelSpec(backbone="test_resnet", stage=-2, deconv_channels=[8, 8])
TINY_TEACHER = KeypointModelSpec(backbone="test_resnet", stage=-2, deconv_channels=[16, 16])

#: Dot colours of keypoints 0..3 in `write_coco`'s images.
DOT_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0))


def write_coco(root: Path, annotations: list[dict], split: str = "train", size: int = 48, num_keypoints: int = 4):
    """Writes ``root/annotations/person_keypoints_<split>.json`` and one gray image per referenced image id, with a
    3×3 dot of colour ``DOT_COLOURS[k]`` on each labelled keypoint ``k`` that lies inside the image."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    image_ids = sorted({a["image_id"] for a in annotations})
    for image_id in image_ids:
        image = np.full((size, size, 3), 90, np.uint8)
        for a in annotations:
            values = a.get("keypoints", [])
            if a["image_id"] != image_id or len(values) % 3:
                continue
            for k, (x, y, v) in enumerate(np.asarray(values, dtype=float).reshape(-1, 3)):
                if v > 0 and 0 <= x < size and 0 <= y < size:
                    image[max(int(y) - 1, 0) : int(y) + 2, max(int(x) - 1, 0) : int(x) + 2] = DOT_COLOURS[k % 4]
        Image.fromarray(image).save(root / split / f"{image_id:05d}.png")
    content = {
        "images": [{"id": i, "file_name": f"{i:05d}.png", "width": size, "height": size} for i in image_ids],
        "annotations": [{"category_id": 1, "iscrowd": 0, "area": 200.0, **a} for a in annotations],
        "categories": [{"id": 1, "name": "thing", "keypoints": ["top", "right", "bottom", "left"][:num_keypoints]}],
    }
    (root / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(content))
    return root


def diamond(ann_id: int, image_id: int, cx: float = 24.0, cy: float = 24.0, r: float = 10.0, v: int = 2) -> dict:
    """An annotation with the four tips of a diamond (top, right, bottom, left) and its box."""
    points = [cx, cy - r, v, cx + r, cy, v, cx, cy + r, v, cx - r, cy, v]
    return {"id": ann_id, "image_id": image_id, "bbox": [cx - r, cy - r, 2 * r, 2 * r], "keypoints": points}


#: Data-module arguments of the tiny shapes set (32-px crops, 8×8 heatmaps).
SHAPES_ARGS = {
    "num_train": 24,
    "num_val": 8,
    "num_test": 8,
    "input_size": 32,
    "batch_size": 8,
    "num_workers": 0,
    "difficulty": 0.0,
}


def shapes(root, **overrides) -> ShapesKeypoints:
    """The tiny shapes keypoint datamodule (`SHAPES_ARGS`) under ``root``, with ``overrides``."""
    return ShapesKeypoints(str(root), **{**SHAPES_ARGS, **overrides})


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    """A one-epoch CPU trainer without logger, checkpoints or progress bar; ``kwargs`` override."""
    settings = {
        "default_root_dir": tmp_path,
        "max_epochs": 1,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        **kwargs,
    }
    return pl.Trainer(**settings)
