from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from visiondistill.explain.probe import ProbeBatch
from visiondistill.explain.render import (
    RIGHT_COLOR,
    WRONG_COLOR,
    _rgb,
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
    grid = render_grid([[panel, panel, panel]] * 5, samples_per_row=2)
    assert grid.dtype == np.uint8 and grid.shape[2] == 3
    # 8-px panels are enlarged 12× to 96 px. Width: 2 margins of 6, 2 samples of 3 panels with 2 gaps of 4, one
    # gap of 16 between the samples. Height: 2 margins, 3 rows with 2 gaps of 8 (no caption band, no title).
    assert grid.shape[:2] == (2 * 6 + 3 * 96 + 2 * 8, 2 * 6 + 2 * (3 * 96 + 2 * 4) + 16)
    assert render_grid([[panel]], panel_size=50).shape[:2] == (2 * 6 + 50, 2 * 6 + 50)
    with pytest.raises(ValueError, match="same"):
        render_grid([[panel, panel], [panel]])
    with pytest.raises(ValueError, match="same size"):
        render_grid([[panel, np.zeros((9, 8, 3))]])
    with pytest.raises(ValueError, match="at least one"):
        render_grid([])


def test_saliency_grid_size_of_sixteen_64px_images():
    images, maps = torch.rand(16, 3, 64, 64), torch.rand(16, 8, 8)
    labels = {"true_labels": list(range(16)), "student_pred": [0] * 16, "teacher_pred": list(range(16))}
    grid = saliency_grid(images, maps, maps, title="epoch 0 · gradcam", **labels)
    # 64-px images enlarged 2× to 128 px; 4 samples per row of 3 panels; 4 rows, each under an 11-px caption line.
    caption, title = 11 + 2 * 3, 11 + 2 * 3 + 8
    assert grid.shape == (2 * 6 + title + 4 * (caption + 128) + 3 * 8, 2 * 6 + 4 * (3 * 128 + 2 * 4) + 3 * 16, 3)


def test_saliency_grid_colours_captions_by_correctness():
    # Black images: the overlays stay below 50 % brightness, so only caption text can have a caption colour.
    images, maps = torch.zeros(2, 3, 32, 32), torch.rand(2, 4, 4)
    right, wrong = np.array(_rgb(RIGHT_COLOR)), np.array(_rgb(WRONG_COLOR))
    grid = saliency_grid(images, maps, maps, true_labels=[0, 1], teacher_pred=[0, 1], student_pred=[1, 1])
    red_y, red_x = np.nonzero(np.all(grid == wrong, axis=-1))
    green_y, green_x = np.nonzero(np.all(grid == right, axis=-1))
    assert red_x.size and green_x.size
    # Panels are 96 px (32 × 3) after a 6-px margin and a 17-px caption band; panels are 4 px apart.
    first_panel_top = 6 + 17
    student_of_sample_0 = (6 + 2 * (96 + 4), 6 + 2 * (96 + 4) + 96)
    assert red_y.max() < first_panel_top and red_y.min() >= 6
    assert student_of_sample_0[0] <= red_x.min() and red_x.max() < student_of_sample_0[1]  # only the wrong one
    assert green_y.max() < first_panel_top
    assert not np.all(grid[6:first_panel_top, 6:102] == 255)  # black "true: 0" caption over the input
    all_right = saliency_grid(images, maps, maps, true_labels=[0, 1], teacher_pred=[0, 1], student_pred=[0, 1])
    assert not np.all(all_right == wrong, axis=-1).any()


def test_long_captions_are_cut_to_the_panel_and_odd_characters_drawn():
    panel = np.ones((32, 32, 3))
    grid = render_grid([[panel]], [["a caption far wider than the panel – with a dash"]], title="epoch · ünïcode → ✓")
    assert grid.shape[1] > 2 * 6 + 96  # the title is wider than the panel: the canvas widens to hold it
    band = grid[6 + 25 : 6 + 25 + 17]  # the caption band under the title
    columns = np.nonzero((band != 255).any(axis=(0, 2)))[0]
    left = (grid.shape[1] - 96) // 2
    assert left <= columns.min() and columns.max() < left + 96


def test_grid_renders_fast():
    images, maps = torch.rand(16, 3, 64, 64), torch.rand(16, 8, 8)
    base, layer = to_hwc(images), overlay(images, maps)
    panels = [[base[i], layer[i], layer[i]] for i in range(16)]
    captions = [["true: circle", "teacher: circle", "student: hexagon"]] * 16
    colors = [[None, RIGHT_COLOR, WRONG_COLOR]] * 16
    best = min(_seconds(lambda: render_grid(panels, captions, colors, title="epoch 1")) for _ in range(3))
    assert best < 0.25  # ~5 ms on one core; the matplotlib figure it replaced took ~0.6 s


def _seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


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
