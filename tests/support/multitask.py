"""Tiny multi-task pieces shared by tests of several packages: teachers, a module builder, multi-task batches."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from visiondistill.tasks import MultiTaskModule

#: One teacher per head: a tiny timm classifier and a tiny U-Net.
CLS_TEACHER = {"id": "cls_t", "head": "cls", "name": "test_resnet"}
SEG_TEACHER = {
    "id": "seg_t",
    "head": "seg",
    "arch": "Unet",
    "encoder_name": "tu-test_resnet",
    "kwargs": {"decoder_channels": [16, 8, 8, 8, 8]},
}


def tiny_multitask(**changes: Any) -> MultiTaskModule:
    """A multi-task module on test_resnet (3 classes, 4 segmentation classes) with both teachers, unless changed."""
    args = {
        "backbone": "test_resnet",
        "num_classes": 3,
        "num_seg_classes": 4,
        "teachers": [CLS_TEACHER, SEG_TEACHER],
        "decoder_channels": 8,
    }
    return MultiTaskModule(**(args | changes))


class SquaresWithClass(Dataset):
    """32-px images with one bright square each; its class labels both the image (``label``) and its pixels."""

    def __init__(self, n: int = 16, size: int = 32, num_classes: int = 3, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = 0.1 * torch.randn(n, 3, size, size, generator=generator)
        self.masks = torch.zeros(n, size, size, dtype=torch.long)
        self.labels = torch.arange(n) % num_classes
        for i in range(n):
            top, left = (int(v) for v in torch.randint(0, size - 10, (2,), generator=generator))
            self.images[i, :, top : top + 10, left : left + 10] += float(self.labels[i] + 1)
            self.masks[i, top : top + 10, left : left + 10] = self.labels[i] + 1

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "mask": self.masks[index], "label": self.labels[index]}


def multitask_loader(n: int = 16, batch_size: int = 8) -> DataLoader:
    """Batches ``{"image", "mask", "label"}`` of `SquaresWithClass` (3 classes, 4 segmentation classes)."""
    return DataLoader(SquaresWithClass(n), batch_size=batch_size)
