from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from visiondistill.explain.probe import ProbeBatch
from visiondistill.explain.render import (
    comparison_grid,
    normalize_maps,
    overlay,
    render_grid,
    saliency_grid,
    save_png,
    to_hwc,
)


def test_to_hwc_handles_grey_and_clips():
    grey = torch.full((2, 1, 5, 7), 2.0)
    out = to_hwc(grey)
    assert out.shape == (2, 5, 7, 3) and out.max() == 1.0
    with pytest.raises(ValueError, match="N×C×H×W"):
        to_hwc(np.zeros((5, 7, 3)))


def test_normalize_maps_resizes_and_scales_each_map():
    maps = torch.stack([torch.arange(16.0).view(4, 4), torch.full((4, 4), 3.0)])
    out = normalize_maps(maps, size=(8, 8))
    assert out.shape == (2, 8, 8)
    assert out[0].min() == 0.0 and out[0].max() == pytest.approx(1.0)
    assert np.all(out[1] == 0.0)  # a constant map has nothing to show


def test_overlay_blends_in_unit_range():
    images = torch.zeros(3, 3, 16, 16)
    maps = torch.rand(3, 4, 4)
    out = overlay(images, maps, alpha=0.4)
    assert out.shape == (3, 16, 16, 3) and 0.0 <= out.min() and out.max() <= 0.4 + 1e-6
    np.testing.assert_allclose(overlay(images, maps, alpha=0.0), 0.0)


def test_render_grid_lays_out_samples_and_rejects_ragged_input():
    panel = np.zeros((8, 8, 3))
    grid = render_grid([[panel, panel, panel]] * 5, samples_per_row=2, panel_inches=1.0, dpi=50)
    assert grid.dtype == np.uint8 and grid.shape[2] == 3
    assert grid.shape[1] == 2 * 3 * 50 and grid.shape[0] >= 3 * 50  # 2 samples × 3 panels wide, 3 rows high
    with pytest.raises(ValueError, match="same"):
        render_grid([[panel, panel], [panel]])
    with pytest.raises(ValueError, match="at least one"):
        render_grid([])


def test_saliency_grid_with_and_without_teacher():
    images, maps = torch.rand(4, 3, 16, 16), torch.rand(4, 4, 4)
    labels = {"true_labels": [0, 1, 2, -1], "student_pred": [0, 0, 2, 1], "class_names": ["a", "b", "c"]}
    both = saliency_grid(images, maps, maps, teacher_pred=[0, 1, 1, 1], samples_per_row=2, **labels)
    student_only = saliency_grid(images, maps, samples_per_row=2, **labels)
    assert both.shape[0] == student_only.shape[0] and both.shape[1] > student_only.shape[1]


def test_comparison_grid_and_save_png(tmp_path):
    grid = comparison_grid(torch.rand(2, 1, 12, 12), [("teacher", torch.rand(2, 3, 3))], title="t")
    path = save_png(grid, tmp_path / "sub" / "grid.png")
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), grid)


def test_probe_images_are_denormalised_or_min_max_scaled():
    images = torch.tensor([[-1.0, 1.0], [0.0, 3.0]]).view(2, 1, 1, 2)
    scaled = ProbeBatch(batch=None, images=images, indices=torch.arange(2)).display_images()
    assert torch.equal(scaled.flatten(1), torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    known = ProbeBatch(batch=None, images=images, indices=torch.arange(2), mean=(0.5,), std=(0.25,))
    assert torch.allclose(known.display_images().flatten(1), torch.tensor([[0.25, 0.75], [0.5, 1.0]]))
