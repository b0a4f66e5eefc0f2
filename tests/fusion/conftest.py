"""Tiny segmentation data and models for the fusion tests (classification fixtures come from tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from visiondistill.models.segmenters import SegmenterSpec

TINY_SEG_STUDENT = SegmenterSpec(
    arch="Unet", encoder_name="tu-test_resnet", kwargs={"decoder_channels": [16, 8, 8, 8, 8]}
)
TINY_SEG_TEACHER = SegmenterSpec(
    arch="Unet", encoder_name="tu-test_resnet", kwargs={"decoder_channels": [32, 16, 16, 16, 16]}
)


@pytest.fixture
def seg_specs() -> tuple[SegmenterSpec, SegmenterSpec]:
    """(student, teacher) specs of two tiny U-Nets on timm's test_resnet encoder."""
    return TINY_SEG_STUDENT, TINY_SEG_TEACHER


@pytest.fixture
def seg_loader() -> DataLoader:
    """Eight 32-px images, each with one bright 10-px square labelled 1 or 2 on background 0."""
    generator = torch.Generator().manual_seed(0)
    images = 0.1 * torch.randn(8, 3, 32, 32, generator=generator)
    masks = torch.zeros(8, 32, 32, dtype=torch.long)
    for i in range(8):
        top, left = (int(v) for v in torch.randint(0, 22, (2,), generator=generator))
        images[i, :, top : top + 10, left : left + 10] += 1.0 + i % 2
        masks[i, top : top + 10, left : left + 10] = 1 + i % 2
    return DataLoader(TensorDataset(images, masks), batch_size=8)
