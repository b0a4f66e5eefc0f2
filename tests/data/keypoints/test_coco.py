"""The COCO keypoint reader (`visiondistill.data.keypoints.coco`) and its rules for imperfect annotations."""

from __future__ import annotations

import pytest

from visiondistill.data.errors import DataError
from visiondistill.data.keypoints.coco import read_coco_keypoints
from visiondistill.data.keypoints.dataset import KeypointCrops

from ...support.keypoints import diamond, write_coco


def test_keypoints_outside_the_image_are_marked_invisible_and_counted(tmp_path):
    annotation = diamond(7, 1, cx=24, cy=24, r=10)
    annotation["keypoints"][0:3] = [24.0, -3.0, 2]  # top, above the image
    annotation["keypoints"][3:6] = [48.5, 24.0, 1]  # right, beyond the 48-px width
    root = write_coco(tmp_path, [annotation])
    read = read_coco_keypoints(root / "annotations" / "person_keypoints_train.json")
    assert read.outside_image == 2
    assert read.instances[0].keypoints[:, 2].tolist() == [0, 0, 2, 2]
    sample = KeypointCrops(read, root / "train", input_size=32)[0]
    assert sample["target_weight"].tolist() == [0, 0, 1, 1] and not sample["target"][:2].any()


def test_a_wrong_number_of_keypoints_names_the_annotation(tmp_path):
    bad = diamond(42, 1)
    bad["keypoints"] = bad["keypoints"][:9]
    root = write_coco(tmp_path, [diamond(1, 1), bad])
    with pytest.raises(DataError, match=r"annotation id 42 .*3 keypoints \(9 values\) but the data set has 4"):
        read_coco_keypoints(root / "annotations" / "person_keypoints_train.json")


def test_missing_visibility_flags_name_the_annotation(tmp_path):
    bad = diamond(5, 1)
    bad["keypoints"] = [v for i, v in enumerate(bad["keypoints"]) if i % 3 != 2]
    root = write_coco(tmp_path, [bad])
    with pytest.raises(DataError, match=r"annotation id 5 has 8 values: 4 \(x, y\) pairs without visibility flags"):
        read_coco_keypoints(root / "annotations" / "person_keypoints_train.json")


def test_visibility_flags_other_than_0_1_2_are_refused(tmp_path):
    bad = diamond(6, 1)
    bad["keypoints"][2] = 3
    root = write_coco(tmp_path, [bad])
    with pytest.raises(DataError, match=r"annotation id 6 has visibility flags \[2.0, 3.0\]"):
        read_coco_keypoints(root / "annotations" / "person_keypoints_train.json")
