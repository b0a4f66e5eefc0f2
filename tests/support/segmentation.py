"""Tiny segmentation data and segmenter specs shared by tests of several packages."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from visiondistill.models.segmenters import SegmenterSpec

#: A U-Net on timm's tiny test_resnet encoder with a thin decoder: ~0.3 M parameters, fast at 32 px.
TINY_STUDENT = SegmenterSpec(arch="Unet", encoder_name="tu-test_resnet", kwargs={"decoder_channels": [16, 8, 8, 8, 8]})
TINY_TEACHER = SegmenterSpec(
    arch="Unet", encoder_name="tu-test_resnet", kwargs={"decoder_channels": [32, 16, 16, 16, 16]}
)


def square_masks(n: int = 16, size: int = 32, num_classes: int = 3, seed: int = 0) -> TensorDataset:
    """Images with one bright square each; the mask labels the square with a class and the rest 0 (background)."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.1 * torch.randn(n, 3, size, size, generator=generator)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        label = 1 + i % (num_classes - 1)
        top, left = (int(v) for v in torch.randint(0, size - 10, (2,), generator=generator))
        images[i, :, top : top + 10, left : left + 10] += float(label)
        masks[i, top : top + 10, left : left + 10] = label
    return TensorDataset(images, masks)
