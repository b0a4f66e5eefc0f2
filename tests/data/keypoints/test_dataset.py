"""Keypoint crops (`visiondistill.data.keypoints.dataset`): where keypoints land, heatmaps, flips, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visiondistill.data.keypoints.coco import read_coco_keypoints
from visiondistill.data.keypoints.dataset import KeypointCrops
from visiondistill.data.transforms import resolve_normalization

from ...support.keypoints import DOT_COLOURS, diamond, write_coco


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


def test_keypoints_pushed_out_of_the_crop_are_marked_invisible(tmp_path):
    root = write_coco(tmp_path, [diamond(1, 1, cx=24, cy=24, r=10)])
    dataset = crops(root, train=True, scale_range=(0.5, 0.5), shift=0.0, flip_probability=0.0)
    sample = dataset[0]  # zoomed in twice: the box is 1.6 times the crop, so every tip leaves it
    assert sample["target_weight"].tolist() == [0, 0, 0, 0] and sample["keypoints"][:, 2].tolist() == [0, 0, 0, 0]


def test_crops_refuse_flip_pairs_that_name_missing_keypoints(tmp_path):
    root = write_coco(tmp_path, [diamond(1, 1)])
    with pytest.raises(ValueError, match=r"flip pair \[-1, 2\]"):
        crops(root, flip_pairs=[[-1, 2]])
