"""Keypoint geometry (`visiondistill.data.keypoints.geometry`): the crop matrix, target heatmaps, flip pairs."""

from __future__ import annotations

import numpy as np
import pytest

from visiondistill.data.keypoints.datamodules import SHAPE_KEYPOINT_NAMES
from visiondistill.data.keypoints.geometry import check_flip_pairs, crop_matrix, gaussian_heatmaps


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


def test_flip_pairs_that_name_missing_keypoints_are_refused():
    with pytest.raises(ValueError, match=r"flip pair \[1, 4\] names keypoint\(s\) \[4\] that do not exist.*0..3"):
        check_flip_pairs([[1, 4]], 4, SHAPE_KEYPOINT_NAMES)
    with pytest.raises(ValueError, match="at most one pair"):
        check_flip_pairs([[1, 3], [3, 2]], 4)
    with pytest.raises(ValueError, match="two keypoint indices"):
        check_flip_pairs([[1, 2, 3]], 4)
