"""Keypoint data: crops and their geometry, target heatmaps, flips with swapped pairs, and every bad-input rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visiondistill.data.errors import DataError
from visiondistill.data.keypoints import (
    SHAPE_KEYPOINT_NAMES,
    SHAPE_TIPS,
    COCOKeypoints,
    KeypointCrops,
    ShapesKeypoints,
    check_flip_pairs,
    crop_matrix,
    extreme_tips,
    gaussian_heatmaps,
    read_coco_keypoints,
)
from visiondistill.data.shapes import ShapesGenerator
from visiondistill.data.transforms import resolve_normalization

from .conftest import DOT_COLOURS, SHAPES_ARGS, diamond, write_coco


def crops(root, **kwargs) -> KeypointCrops:
    read = read_coco_keypoints(root / "annotations" / "person_keypoints_train.json")
    return KeypointCrops(read, root / "train", **{"input_size": 32, **kwargs})


def pixel_colour(sample, x, y):
    """The un-normalised RGB (0-255) of the crop pixel under continuous point (x, y)."""
    mean, std = resolve_normalization(3)
    image = sample["image"] * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return tuple(int(round(float(c) * 255)) for c in image[:, int(y), int(x)])


def nearest_colour(rgb):
    return int(np.argmin([sum((a - b) ** 2 for a, b in zip(rgb, colour, strict=True)) for colour in DOT_COLOURS]))


# ------------------------------------------------------------------------------------------------ geometry
def test_crop_keypoints_land_on_their_dots_and_heatmaps_peak_there(tmp_path):
    root = write_coco(tmp_path, [diamond(1, 1, cx=20, cy=26, r=9), diamond(2, 2, cx=30, cy=15, r=6, v=1)])
    dataset = crops(root)
    for sample in (dataset[0], dataset[1]):
        assert sample["image"].shape == (3, 32, 32) and sample["target"].shape == (4, 8, 8)
        assert sample["target_weight"].tolist() == [1.0] * 4
        for k, (x, y, _) in enumerate(sample["keypoints"].tolist()):
            assert nearest_colour(pixel_colour(sample, x, y)) == k
            peak = np.unravel_index(int(sample["target"][k].argmax()), (8, 8))
            assert abs((peak[1] + 0.5) * 4 - x) <= 2 and abs((peak[0] + 0.5) * 4 - y) <= 2
        # the crop-to-image map brings the crop keypoints back onto the annotation
        to_image = sample["to_image"]
        back = sample["keypoints"][:, :2] @ to_image[:, :2].T + to_image[:, 2]
        assert torch.allclose(back, sample["image_keypoints"][:, :2], atol=1e-3)
    # the box (20 px) fills 1/1.25 of the 32-px crop
    assert float(dataset[0]["box_size"]) == pytest.approx(32 / 1.25)


def test_crop_matrix_centres_the_box_and_scales_its_longer_side():
    matrix = crop_matrix([10, 20, 40, 10], output_size=64, padding=1.25)
    assert (matrix @ [30, 25, 1]).tolist() == pytest.approx([32, 32])
    assert (matrix @ [50, 25, 1])[0] - (matrix @ [10, 25, 1])[0] == pytest.approx(64 / 1.25)
    turned = crop_matrix([0, 0, 10, 10], output_size=10, padding=1.0, rotation=90)
    assert (turned @ [10, 5, 1]).tolist() == pytest.approx([5, 0])  # the right edge turns to the top


def test_gaussian_heatmaps_peak_at_the_sub_pixel_location_and_skip_unlabelled():
    heatmaps = gaussian_heatmaps(np.array([[9.0, 5.0, 2.0], [3.0, 3.0, 0.0]]), size=4, stride=2, sigma=1.0)
    grid = np.arange(4) + 0.5
    expected = np.exp(-((grid[None, :] - 4.5) ** 2 + (grid[:, None] - 2.5) ** 2) / 2)
    assert np.allclose(heatmaps[0], expected) and not heatmaps[1].any()


# ---------------------------------------------------------------------------------------------------- flip
def test_training_flips_swap_the_left_right_pair(tmp_path):
    root = write_coco(tmp_path, [diamond(1, 1, cx=22, cy=24, r=12)])
    dataset = crops(root, train=True, flip_pairs=[[1, 3]], scale_range=(1.0, 1.0), shift=0.0)
    torch.manual_seed(0)
    seen = set()
    for _ in range(16):
        sample = dataset[0]
        colours = [nearest_colour(pixel_colour(sample, x, y)) for x, y, _ in sample["keypoints"].tolist()]
        assert colours in ([0, 1, 2, 3], [0, 3, 2, 1])  # a flip puts the left dot on the right, renamed "right"
        seen.add(tuple(colours))
        right, left = sample["keypoints"][1, 0], sample["keypoints"][3, 0]
        assert right > left  # "right" stays the rightmost keypoint
    assert len(seen) == 2


def test_training_augmentation_is_reproducible_from_the_torch_seed(tmp_path):
    root = write_coco(tmp_path, [diamond(1, 1, cx=22, cy=24, r=12)])
    dataset = crops(root, train=True, flip_pairs=[[1, 3]])
    draws = []
    for _ in range(2):
        torch.manual_seed(3)
        draws.append([dataset[0] for _ in range(6)])
    for first, second in zip(*draws, strict=True):
        assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(draws[0][0]["image"], sample["image"]) for sample in draws[0][1:])


# -------------------------------------------------------------------------------------------- bad input
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


def test_keypoints_pushed_out_of_the_crop_are_marked_invisible(tmp_path):
    root = write_coco(tmp_path, [diamond(1, 1, cx=24, cy=24, r=10)])
    dataset = crops(root, train=True, scale_range=(0.5, 0.5), shift=0.0, flip_probability=0.0)
    sample = dataset[0]  # zoomed in twice: the box is 1.6 times the crop, so every tip leaves it
    assert sample["target_weight"].tolist() == [0, 0, 0, 0] and sample["keypoints"][:, 2].tolist() == [0, 0, 0, 0]


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


def test_flip_pairs_that_name_missing_keypoints_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"flip pair \[1, 4\] names keypoint\(s\) \[4\] that do not exist.*0..3"):
        check_flip_pairs([[1, 4]], 4, SHAPE_KEYPOINT_NAMES)
    with pytest.raises(ValueError, match="at most one pair"):
        check_flip_pairs([[1, 3], [3, 2]], 4)
    with pytest.raises(ValueError, match="two keypoint indices"):
        check_flip_pairs([[1, 2, 3]], 4)
    with pytest.raises(ValueError, match=r"flip pair \[0, 7\]"):
        COCOKeypoints(str(tmp_path), num_keypoints=4, flip_pairs=[[0, 7]])
    root = write_coco(tmp_path, [diamond(1, 1)])
    with pytest.raises(ValueError, match=r"flip pair \[-1, 2\]"):
        crops(root, flip_pairs=[[-1, 2]])


# ------------------------------------------------------------------------------------- data modules
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


def test_shapes_keypoints_module_uses_extreme_tips(shapes_keypoints_dir):
    module = ShapesKeypoints(str(shapes_keypoints_dir), **SHAPES_ARGS)
    module.setup("fit")
    assert module.num_keypoints == 4 and module.keypoint_names == list(SHAPE_KEYPOINT_NAMES)
    assert module.flip_pairs == [[1, 3]] and len(module.train_dataset) > 10
    for instance in module.train_dataset.instances:
        x, y = instance.keypoints[:, 0], instance.keypoints[:, 1]
        assert y[0] == y.min() and x[1] == x.max() and y[2] == y.max() and x[3] == x.min()
    with pytest.raises(ValueError, match="a circle has no corners or tips"):
        ShapesKeypoints(str(shapes_keypoints_dir), categories=["circle", "star"])
