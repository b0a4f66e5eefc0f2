"""Detection distillation losses against independent numpy transcriptions of their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visiondistill.distill import losses


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _binary_kd_numpy(s: np.ndarray, t: np.ndarray, temperature: float, w: np.ndarray | None) -> float:
    p, q = _sigmoid(t / temperature), _sigmoid(s / temperature)
    kl = (p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))).sum(axis=-1)
    if w is None:
        return float(kl.mean() * temperature**2)
    return float((kl * w).sum() / w.sum() * temperature**2)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_kd_matches_numpy(temperature: float, weighted: bool):
    generator = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 7, 3, generator=generator, dtype=torch.float64), torch.randn(2, 7, 3, dtype=torch.float64)
    w = torch.rand(2, 7, generator=generator, dtype=torch.float64) if weighted else None
    expected = _binary_kd_numpy(s.numpy(), t.numpy(), temperature, None if w is None else w.numpy())
    assert float(losses.binary_kd_loss(s, t, temperature, w)) == pytest.approx(expected, rel=1e-9)


def test_binary_kd_is_zero_for_equal_logits_and_stable_for_large_ones():
    logits = torch.tensor([[[-50.0, 0.0, 60.0]]])
    assert float(losses.binary_kd_loss(logits, logits.clone())) == pytest.approx(0.0, abs=1e-9)
    assert torch.isfinite(losses.binary_kd_loss(-logits, logits))


def test_binary_kd_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        losses.binary_kd_loss(torch.zeros(1, 4, 2), torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="one per location"):
        losses.binary_kd_loss(torch.zeros(1, 4, 2), torch.zeros(1, 4, 2), weights=torch.ones(4))
    with pytest.raises(ValueError, match="temperature"):
        losses.binary_kd_loss(torch.zeros(1, 4, 2), torch.zeros(1, 4, 2), temperature=0.0)


def _fgd_masks_numpy(boxes: list[list[list[float]]], h: int, w: int, image: tuple[int, int]):
    fg, bg = np.zeros((len(boxes), h, w)), np.ones((len(boxes), h, w))
    for i, image_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in image_boxes:
            top, left = int(math.floor(y0 * h / image[0])), int(math.floor(x0 * w / image[1]))
            bottom = max(int(math.ceil(y1 * h / image[0])), top + 1)
            right = max(int(math.ceil(x1 * w / image[1])), left + 1)
            area = (bottom - top) * (right - left)
            for y in range(top, bottom):
                for x in range(left, right):
                    fg[i, y, x] = max(fg[i, y, x], 1.0 / area)
                    bg[i, y, x] = 0.0
        if bg[i].sum() > 0:
            bg[i] /= bg[i].sum()
    return fg, bg


def test_fgd_masks_tight_extent_matches_numpy():
    boxes = [[[3.0, 5.0, 20.0, 30.0], [10.0, 10.0, 14.0, 13.0]], []]
    fg, bg = losses.fgd_masks([torch.tensor(b).reshape(-1, 4) for b in boxes], 8, 8, (32, 32), extent="tight")
    fg_np, bg_np = _fgd_masks_numpy(boxes, 8, 8, (32, 32))
    np.testing.assert_allclose(fg.numpy(), fg_np, atol=1e-7)
    np.testing.assert_allclose(bg.numpy(), bg_np, atol=1e-7)
    assert float(bg[1].sum()) == pytest.approx(1.0) and float(fg[1].sum()) == 0.0
    # the smaller box (2×2 cells) wins where it overlaps the larger one (7×5 cells)
    assert float(fg[0, 2, 2]) == pytest.approx(1 / 4) and float(fg[0, 1, 0]) == pytest.approx(1 / 35)


def _fgd_numpy(s, t, fg, bg, alpha, beta, gamma, temperature):
    def attention(f):
        n, c, h, w = f.shape
        spatial = np.abs(f).mean(axis=1).reshape(n, -1) / temperature
        spatial = h * w * np.exp(spatial) / np.exp(spatial).sum(axis=1, keepdims=True)
        channel = np.abs(f).mean(axis=(2, 3)) / temperature
        channel = c * np.exp(channel) / np.exp(channel).sum(axis=1, keepdims=True)
        return spatial.reshape(n, h, w), channel

    n = s.shape[0]
    sa_t, ca_t = attention(t)
    total = 0.0
    for i in range(n):
        for c in range(s.shape[1]):
            d2 = (t[i, c] - s[i, c]) ** 2 * sa_t[i] * ca_t[i, c]
            total += alpha * (d2 * fg[i]).sum() + beta * (d2 * bg[i]).sum()
    sa_s, ca_s = attention(s)
    total += gamma * (np.abs(sa_t - sa_s).sum() + np.abs(ca_t - ca_s).sum())
    return total / n


@pytest.mark.parametrize("gamma", [0.0, 0.3])
def test_fgd_feature_loss_matches_numpy(gamma: float):
    generator = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 4, 5, generator=generator, dtype=torch.float64)
    t = torch.randn(2, 3, 4, 5, generator=generator, dtype=torch.float64)
    fg, bg = losses.fgd_masks([torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.zeros(0, 4)], 4, 5, (16, 20))
    fg, bg = fg.double(), bg.double()
    got = losses.fgd_feature_loss(s, t, fg, bg, alpha=0.7, beta=0.2, gamma=gamma, temperature=0.5)
    expected = _fgd_numpy(s.numpy(), t.numpy(), fg.numpy(), bg.numpy(), 0.7, 0.2, gamma, 0.5)
    assert float(got) == pytest.approx(expected, rel=1e-9)


def test_fgd_feature_loss_rejects_bad_masks():
    with pytest.raises(ValueError, match=r"foreground must have shape \(1, 2, 2\)"):
        losses.fgd_feature_loss(
            torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 3), torch.zeros(1, 2, 2)
        )


def _fgd_masks_reference(boxes: torch.Tensor, img_shape: tuple[int, int], h: int, w: int):
    """A transcription of the FGD authors' mask code (yzd-v/FGD, mmdet/distillation/losses/fgd.py,
    FeatureLoss.forward) for one image: same operations, same dtypes."""
    mask_fg = torch.zeros(h, w)
    mask_bg = torch.ones(h, w)
    new_boxxes = torch.ones_like(boxes)
    new_boxxes[:, 0] = boxes[:, 0] / img_shape[1] * w
    new_boxxes[:, 2] = boxes[:, 2] / img_shape[1] * w
    new_boxxes[:, 1] = boxes[:, 1] / img_shape[0] * h
    new_boxxes[:, 3] = boxes[:, 3] / img_shape[0] * h
    wmin, wmax = torch.floor(new_boxxes[:, 0]).int(), torch.ceil(new_boxxes[:, 2]).int()
    hmin, hmax = torch.floor(new_boxxes[:, 1]).int(), torch.ceil(new_boxxes[:, 3]).int()
    area = 1.0 / (hmax.view(1, -1) + 1 - hmin.view(1, -1)) / (wmax.view(1, -1) + 1 - wmin.view(1, -1))
    for j in range(len(boxes)):
        mask_fg[hmin[j] : hmax[j] + 1, wmin[j] : wmax[j] + 1] = torch.maximum(
            mask_fg[hmin[j] : hmax[j] + 1, wmin[j] : wmax[j] + 1], area[0][j]
        )
    mask_bg = torch.where(mask_fg > 0, 0, 1).float()
    if torch.sum(mask_bg):
        mask_bg /= torch.sum(mask_bg)
    return mask_fg, mask_bg


@pytest.mark.parametrize(
    ("boxes", "img_shape", "h", "w"),
    [
        ([[3.0, 5.0, 20.0, 30.0], [10.0, 10.0, 14.0, 13.0]], (32, 32), 8, 8),  # overlap: the smaller box wins
        ([[0.0, 0.0, 16.0, 8.0]], (32, 64), 4, 4),  # exactly one cell: the reference still covers 2×2
        ([[1.5, 2.25, 63.9, 31.9], [40.0, 0.0, 64.0, 32.0]], (32, 64), 4, 8),  # to the far edge: slices cut there
        ([[7.0, 7.0, 7.0, 7.0]], (24, 40), 3, 5),  # an empty box on no cell boundary
        ([[16.0, 16.0, 16.0, 16.0]], (32, 64), 4, 4),  # an empty box on a cell corner
        ([[0.0, 0.0, 64.0, 32.0]], (32, 64), 4, 4),  # the whole image: no background left
    ],
)
def test_fgd_masks_reproduce_the_authors_masks(boxes, img_shape, h, w):
    tensor = torch.tensor(boxes)
    fg, bg = losses.fgd_masks([tensor], h, w, img_shape)
    fg_ref, bg_ref = _fgd_masks_reference(tensor, img_shape, h, w)
    assert torch.equal(fg[0], fg_ref)
    torch.testing.assert_close(bg[0], bg_ref, rtol=0, atol=0)


def test_fgd_masks_reference_and_tight_extents_differ_as_documented():
    box = [torch.tensor([[0.0, 0.0, 16.0, 8.0]])]  # one cell of a 4×4 map over a 32×64 image
    fg_ref, _ = losses.fgd_masks(box, 4, 4, (32, 64))
    fg_tight, _ = losses.fgd_masks(box, 4, 4, (32, 64), extent="tight")
    assert float(fg_tight[0].sum()) == 1.0 and int((fg_tight[0] > 0).sum()) == 1
    assert int((fg_ref[0] > 0).sum()) == 4 and float(fg_ref[0, 0, 0]) == 0.25
    # a negative corner starts at 0 (the reference's negative slice start would wrap to the far edge); the area
    # still counts the uncut extent, rows and columns -1 … 1: 1 / (3 · 3)
    fg_neg, _ = losses.fgd_masks([torch.tensor([[-8.0, -8.0, 8.0, 8.0]])], 4, 4, (32, 32))
    assert int((fg_neg[0] > 0).sum()) == 4 and float(fg_neg[0, 0, 0]) == pytest.approx(1 / 9)
    with pytest.raises(ValueError, match="extent must be 'reference' or 'tight', got 'loose'"):
        losses.fgd_masks(box, 4, 4, (32, 64), extent="loose")
