"""Spatial maps that distillation losses and explanation metrics both compute.

- `attention_map`: the activation-based attention map of attention transfer (a loss in `visiondistill.distill`, an
  agreement metric in `visiondistill.explain`);
- `gradcam_map`: Grad-CAM as a differentiable function of activations and gradients (`SaliencyAlignment` trains
  on it; the explanation callbacks use the grad-cam package, whose GradCAM gives the same map up to scaling);
- `boxes_to_masks`: xyxy boxes rasterised to masks (pointing game, detection saliency).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from visiondistill.core.validation import check_ndim, check_positive, check_same_shape

__all__ = ["attention_map", "boxes_to_masks", "gradcam_map"]


def _spatial_attention(feature: Tensor, p: float) -> Tensor:
    """``mean_c |A_c|^p`` as an (N, H, W) map, before normalisation."""
    check_ndim("feature", feature, 4, "(N, C, H, W)")
    if p == 2:
        return feature.pow(2).mean(dim=1)
    return feature.abs().pow(p).mean(dim=1)


def attention_map(feature: Tensor, p: float = 2, size: tuple[int, int] | None = None) -> Tensor:
    """Activation-based spatial attention map of attention transfer (Zagoruyko & Komodakis, ICLR 2017).

    ``q(A) = L2-normalize(mean_c |A_c|^p, flattened)``, as in the reference code
    ``F.normalize(x.pow(2).mean(1).view(x.size(0), -1))``.

    Args:
        feature: Feature map, shape (N, C, H, W).
        p: Exponent of the absolute activations (> 0; the paper uses 2).
        size: Optional ``(H', W')``: the un-normalised map is resized bilinearly (``align_corners=False``) to this
            size before normalisation, which is how a student map is compared with a teacher map of another size.

    Returns:
        Unit-norm maps, shape (N, H·W) (or (N, H'·W') when ``size`` is given). An all-zero feature gives an
        all-zero map.

    Raises:
        ValueError: If ``feature`` is not 4-D or ``p`` is not positive.

    Example:
        >>> q = attention_map(torch.randn(2, 8, 4, 4))
        >>> q.shape, torch.allclose(q.norm(dim=1), torch.ones(2))
        (torch.Size([2, 16]), True)
    """
    check_positive("p", p)
    amap = _spatial_attention(feature, p)
    if size is not None and tuple(amap.shape[-2:]) != tuple(size):
        amap = F.interpolate(amap.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)
    return F.normalize(amap.flatten(1), dim=1)


def gradcam_map(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017) as a differentiable tensor function.

    ``relu(Σ_c α_c · A_c)`` with ``α_c = mean_{h,w} ∂y/∂A_c``, as grad-cam's ``GradCAM`` before it scales the map.
    When ``gradients`` were taken with ``create_graph=True`` the map is differentiable in the network's parameters
    through both the activations and the channel weights.

    Args:
        activations: Feature map ``A``, shape (N, C, H, W).
        gradients: ``∂y/∂A`` of the explained score, same shape.

    Returns:
        Non-negative maps, shape (N, H, W), unscaled.

    Raises:
        ValueError: If the shapes differ or are not 4-D.

    Example:
        >>> a = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.0]]]])  # N=1, C=2, H=1, W=2
        >>> gradcam_map(a, torch.ones_like(a)).tolist()
        [[[4.0, 0.0]]]
    """
    check_same_shape("activations", activations, "gradients", gradients)
    check_ndim("activations", activations, 4, "(N, C, H, W)")
    alpha = gradients.mean(dim=(2, 3), keepdim=True)
    return F.relu((alpha * activations).sum(dim=1))


def boxes_to_masks(boxes_per_image: Sequence[Tensor], height: int, width: int) -> Tensor:
    """Rasterise xyxy boxes (in pixels) to one boolean mask per image.

    A pixel (row i, column j) is inside a box when its centre ``(j + 0.5, i + 0.5)`` lies in the closed box
    ``[x1, x2] × [y1, y2]``; integer boxes therefore cover exactly ``mask[y1:y2, x1:x2]``. Boxes may reach outside the
    image. A box narrower than a pixel may cover no pixel centre and then marks nothing.

    Args:
        boxes_per_image: One (M, 4) tensor of ``x1, y1, x2, y2`` boxes per image (M may be 0).
        height: Mask height H.
        width: Mask width W.

    Returns:
        Bool tensor of shape (N, H, W), the union of each image's boxes.

    Raises:
        ValueError: If a box tensor is not (M, 4).

    Example:
        >>> boxes_to_masks([torch.tensor([[1, 0, 3, 2]])], 3, 4).int()[0]
        tensor([[0, 1, 1, 0],
                [0, 1, 1, 0],
                [0, 0, 0, 0]], dtype=torch.int32)
    """
    masks = torch.zeros(len(boxes_per_image), height, width, dtype=torch.bool)
    ys = torch.arange(height, dtype=torch.float64) + 0.5
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    for index, boxes in enumerate(boxes_per_image):
        boxes = torch.as_tensor(boxes)
        if boxes.numel() == 0:
            continue
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes of image {index} must have shape (M, 4) in xyxy format, got {tuple(boxes.shape)}")
        b = boxes.detach().cpu().to(torch.float64)
        inside_x = (xs >= b[:, 0:1]) & (xs <= b[:, 2:3])  # (M, W)
        inside_y = (ys >= b[:, 1:2]) & (ys <= b[:, 3:4])  # (M, H)
        masks[index] = (inside_y.unsqueeze(2) & inside_x.unsqueeze(1)).any(dim=0)
    if boxes_per_image:
        masks = masks.to(torch.as_tensor(boxes_per_image[0]).device)
    return masks
