"""The keypoint data modules (`visiondistill.data.keypoints.datamodules`) and the package's public names."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import visiondistill.data.keypoints as keypoints_package
from visiondistill.data.keypoints.datamodules import (
    SHAPE_KEYPOINT_NAMES,
    SHAPE_TIPS,
    COCOKeypoints,
    ShapesKeypoints,
    extreme_tips,
)
from visiondistill.data.shapes import ShapesGenerator

from ...support.keypoints import SHAPES_ARGS, diamond, write_coco


def test_coco_keypoints_module_reads_splits_and_falls_back_to_val_for_test(tmp_path):
    write_coco(tmp_path, [diamond(1, 1), diamond(2, 2, cx=20)], split="train")
    write_coco(tmp_path, [diamond(3, 3)], split="val")
    module = COCOKeypoints(str(tmp_path), flip_pairs=[[1, 3]], input_size=32, batch_size=2, num_workers=0)
    module.setup("fit")
    module.setup("test")
    assert module.num_keypoints == 4 and module.keypoint_names == ["top", "right", "bottom", "left"]
    assert module.test_split == "val" and len(module.test_dataset) == 1
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["target"].shape == (2, 4, 8, 8)


def test_coco_keypoints_module_refuses_flip_pairs_that_name_missing_keypoints(tmp_path):
    with pytest.raises(ValueError, match=r"flip pair \[0, 7\]"):
        COCOKeypoints(str(tmp_path), num_keypoints=4, flip_pairs=[[0, 7]])


def test_extreme_tips_follow_image_axes_and_refuse_tips_outside_the_image():
    tips = np.array([[5, 1, 2], [9, 4, 2], [6, 9, 1], [1, 5, 2], [0, 0, 0]], np.float32)
    assert extreme_tips(tips, 4)[:, :2].tolist() == [[5, 1], [9, 4], [6, 9], [1, 5]]
    assert extreme_tips(tips, 4)[:, 2].tolist() == [2, 2, 1, 2]
    assert extreme_tips(tips, 5) is None


def test_shape_tips_are_the_generator_slots_in_use():
    generator = ShapesGenerator(image_size=64, min_objects=3, max_objects=3)
    for index in range(30):
        for obj in generator.sample(index, seed=1).objects:
            name = generator.classes[obj.category_id]
            if name in SHAPE_TIPS:
                assert not obj.keypoints[SHAPE_TIPS[name] :].any()  # slots past the tips are unused


def test_shapes_keypoints_module_uses_extreme_tips(shapes_keypoints_dir, caplog):
    module = ShapesKeypoints(str(shapes_keypoints_dir), **SHAPES_ARGS)
    with caplog.at_level(logging.INFO):
        module.setup("fit")
    # objects cut by the image border are skipped, and the log says so rather than a bare count
    assert "annotations skipped (an object with a tip outside the image" in caplog.text
    assert module.num_keypoints == 4 and module.keypoint_names == list(SHAPE_KEYPOINT_NAMES)
    assert module.flip_pairs == [[1, 3]] and len(module.train_dataset) > 10
    for instance in module.train_dataset.instances:
        x, y = instance.keypoints[:, 0], instance.keypoints[:, 1]
        assert y[0] == y.min() and x[1] == x.max() and y[2] == y.max() and x[3] == x.min()
    with pytest.raises(ValueError, match="a circle has no corners or tips"):
        ShapesKeypoints(str(shapes_keypoints_dir), categories=["circle", "star"])


def test_the_package_re_exports_every_public_name():
    # the names the single module visiondistill/data/keypoints.py exported, and flip_permutation that tasks import
    before_the_split = [
        "SHAPE_KEYPOINT_NAMES", "SHAPE_TIPS", "COCOKeypoints", "KeypointCrops", "KeypointInstance", "ShapesKeypoints",
        "check_flip_pairs", "crop_matrix", "extreme_tips", "gaussian_heatmaps", "read_coco_keypoints",
        "flip_permutation",
    ]  # fmt: skip
    assert set(before_the_split) <= set(keypoints_package.__all__)
    assert all(hasattr(keypoints_package, name) for name in keypoints_package.__all__)
    assert keypoints_package.ShapesKeypoints is ShapesKeypoints and keypoints_package.extreme_tips is extreme_tips
