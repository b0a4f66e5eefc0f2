"""The spatial maps shared by losses and metrics (`visiondistill.core.maps`), checked by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from visiondistill.core.maps import attention_map, boxes_to_masks, gradcam_map

# N=1, C=2, H=1, W=2: channel 0 is [-1, 2], channel 1 is [3, 0] (a negative value, so |A| matters for odd p).
FEATURE = torch.tensor([[[[-1.0, 2.0]], [[3.0, 0.0]]]], dtype=torch.float64)


@pytest.mark.parametrize(
    ("p", "unnormalised"),
    [
        (1, [(1 + 3) / 2, (2 + 0) / 2]),  # mean_c |A_c|
        (2, [(1 + 9) / 2, (4 + 0) / 2]),  # mean_c A_c², the paper's choice (its own branch in the code)
        (3, [(1 + 27) / 2, (8 + 0) / 2]),  # |−1|³, not (−1)³
        (0.5, [(1 + math.sqrt(3)) / 2, math.sqrt(2) / 2]),
    ],
)
def test_attention_map_by_hand(p: float, unnormalised: list[float]):
    expected = torch.tensor([unnormalised], dtype=torch.float64)
    expected = expected / expected.norm()
    torch.testing.assert_close(attention_map(FEATURE, p=p), expected)


def test_attention_map_averages_channels_per_location_and_keeps_images_apart():
    feature = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).reshape(2, 3, 2, 2) - 5
    amap = attention_map(feature)
    expected = F.normalize(feature.pow(2).mean(dim=1).flatten(1), dim=1)
    assert amap.shape == (2, 4)
    torch.testing.assert_close(amap, expected)
    torch.testing.assert_close(amap.norm(dim=1), torch.ones(2, dtype=torch.float64))


def test_attention_map_resizes_before_normalising():
    feature = torch.rand(2, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) - 0.5
    raw = feature.pow(2).mean(dim=1, keepdim=True)
    resized = F.interpolate(raw, size=(4, 3), mode="bilinear", align_corners=False).flatten(1)
    amap = attention_map(feature, size=(4, 3))
    assert amap.shape == (2, 12)
    torch.testing.assert_close(amap, F.normalize(resized, dim=1))
    # The size it already has changes nothing.
    torch.testing.assert_close(attention_map(feature, size=(2, 2)), attention_map(feature))


def test_attention_map_of_an_all_zero_feature_is_zero():
    amap = attention_map(torch.zeros(1, 2, 3, 3))
    assert torch.equal(amap, torch.zeros(1, 9))


def test_attention_map_errors():
    with pytest.raises(ValueError, match="^p must be a positive number, got 0$"):
        attention_map(FEATURE, p=0)
    with pytest.raises(ValueError, match="^p must be a positive number, got -1$"):
        attention_map(FEATURE, p=-1)
    with pytest.raises(ValueError, match=r"^feature must be 4-D \(N, C, H, W\), got shape \(2, 3, 4\)$"):
        attention_map(torch.ones(2, 3, 4))


def test_gradcam_map_by_hand():
    # N=1, C=2, H=1, W=2. alpha = spatial MEAN of the gradients: [ (1+3)/2, (-2+0)/2 ] = [2, -1].
    activations = torch.tensor([[[[1.0, 2.0]], [[4.0, -1.0]]]])
    gradients = torch.tensor([[[[1.0, 3.0]], [[-2.0, 0.0]]]])
    # sum_c alpha_c A_c = [2·1 − 4, 2·2 + 1] = [−2, 5] → relu → [0, 5]
    assert gradcam_map(activations, gradients).tolist() == [[[0.0, 5.0]]]


def test_gradcam_map_keeps_images_and_positions_apart():
    generator = torch.Generator().manual_seed(1)
    activations = torch.randn(3, 4, 2, 5, generator=generator, dtype=torch.float64)
    gradients = torch.randn(3, 4, 2, 5, generator=generator, dtype=torch.float64)
    alpha = gradients.mean(dim=(2, 3), keepdim=True)
    expected = (alpha * activations).sum(dim=1).clamp(min=0)
    cam = gradcam_map(activations, gradients)
    assert cam.shape == (3, 2, 5)
    torch.testing.assert_close(cam, expected)


def test_gradcam_map_errors():
    with pytest.raises(ValueError, match=r"^activations and gradients must have the same shape, got \(1, 2, 3, 3\)"):
        gradcam_map(torch.ones(1, 2, 3, 3), torch.ones(1, 2, 3, 4))
    with pytest.raises(ValueError, match=r"^activations must be 4-D \(N, C, H, W\), got shape \(2, 3, 3\)"):
        gradcam_map(torch.ones(2, 3, 3), torch.ones(2, 3, 3))


def test_boxes_to_masks_covers_pixel_centres_inside_the_closed_box():
    # Centres sit at .5: a box from 0.5 to 1.5 touches the centres of pixels 0 and 1 on its edges, and takes both.
    masks = boxes_to_masks([torch.tensor([[0.5, 0.5, 1.5, 2.5]])], 4, 4)
    expected = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected[0, 0:3, 0:2] = True  # rows (y) 0..2, columns (x) 0..1: x and y are not swapped
    assert torch.equal(masks, expected)
    # Just inside the edge centres: nothing on that side.
    assert not boxes_to_masks([torch.tensor([[0.51, 0.51, 1.49, 2.49]])], 4, 4)[0, 0].any()


def test_boxes_to_masks_takes_the_union_per_image_and_keeps_images_apart():
    boxes = [torch.tensor([[0, 0, 1, 1], [2, 3, 4, 4]]), torch.zeros(0, 4), torch.tensor([[3, 0, 4, 2]])]
    masks = boxes_to_masks(boxes, 4, 4)
    assert masks.shape == (3, 4, 4) and masks.dtype == torch.bool
    expected = torch.zeros(3, 4, 4, dtype=torch.bool)
    expected[0, 0, 0] = True
    expected[0, 3, 2:4] = True
    expected[2, 0:2, 3] = True
    assert torch.equal(masks, expected)


def test_boxes_to_masks_of_no_images_and_bad_boxes():
    assert boxes_to_masks([], 2, 3).shape == (0, 2, 3)
    # An image without boxes may come as (0, 4) or as a plain empty tensor (an empty JSON list): no pixel, no error.
    empty = boxes_to_masks([torch.tensor([]), torch.zeros(0, 4), torch.tensor([[0, 0, 1, 1]])], 2, 3)
    assert empty.tolist() == [[[False] * 3] * 2] * 2 + [[[True, False, False], [False, False, False]]]
    with pytest.raises(ValueError, match=r"image 1 .*\(M, 4\)"):
        boxes_to_masks([torch.tensor([[0, 0, 1, 1]]), torch.tensor([1.0, 2.0, 3.0])], 4, 4)
    with pytest.raises(ValueError, match=r"\(M, 4\)"):
        boxes_to_masks([torch.tensor([[0, 0, 1]])], 4, 4)
