"""Albumentations pipelines for the data modules (written against albumentations 2.x)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import torch
from albumentations.pytorch import ToTensorV2

from visiondistill.core.errors import ConfigError
from visiondistill.data.channels import resolve_in_channels

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TorchSeededCompose",
    "augmentation_pipeline",
    "classification_transforms",
    "resolve_normalization",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def resolve_normalization(
    in_channels: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return per-channel mean and std for ``in_channels`` channels.

    ``None`` means the ImageNet statistics; three-channel statistics are averaged for a one-channel input.

    Args:
        in_channels: 1 (grayscale) or 3 (RGB).
        mean: Per-channel mean in [0, 1] units, or ``None``.
        std: Per-channel standard deviation in [0, 1] units, or ``None``.

    Returns:
        ``(mean, std)``, each a tuple of ``in_channels`` floats.

    Raises:
        ValueError: For another channel count, a length that does not fit, or a non-positive std.
    """
    in_channels = resolve_in_channels(in_channels, owner="normalization")
    resolved = []
    for name, values, default in (("mean", mean, IMAGENET_MEAN), ("std", std, IMAGENET_STD)):
        values = tuple(float(v) for v in (default if values is None else values))
        if len(values) == 3 and in_channels == 1:
            values = (sum(values) / 3,)
        if len(values) != in_channels:
            raise ConfigError(f"{name} needs {in_channels} value(s) for in_channels={in_channels}, got {values!r}")
        resolved.append(values)
    if min(resolved[1]) <= 0:
        raise ConfigError(f"std must be positive, got {resolved[1]!r}")
    return resolved[0], resolved[1]


def classification_transforms(
    image_size: int,
    train: bool,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    in_chans: int | None = None,
    replayable: bool = False,
) -> A.Compose:
    """Build the image pipeline for classification.

    Training adds light augmentation that keeps a shape's class: flips, 90-degree rotations, a small affine
    (shift, scale, rotation) and brightness/contrast. Evaluation only resizes. Both end with ``Normalize`` and
    ``ToTensorV2``.

    Args:
        image_size: Output height and width.
        train: Add augmentation.
        in_channels: 1 for ``H x W`` or ``H x W x 1`` grayscale input, 3 for RGB ``H x W x 3``.
        mean: Per-channel mean in [0, 1] units; ``None`` = ImageNet (averaged for grayscale).
        std: Per-channel std in [0, 1] units; ``None`` = ImageNet (averaged for grayscale).
        in_chans: Deprecated spelling of ``in_channels``.
        replayable: Return a plain ``Compose`` that is not reseeded from torch on each call: its draws follow
            ``set_random_seed`` (`visiondistill.data.views` sets a view's seed before each call).

    Returns:
        A pipeline called as ``pipeline(image=array)["image"]`` that returns a ``float32`` tensor
        ``in_channels x image_size x image_size``.

    Raises:
        ValueError: For a non-positive ``image_size`` or inconsistent normalisation arguments.

    Example::

        >>> import numpy as np
        >>> pipeline = classification_transforms(32, train=False, in_channels=1)
        >>> pipeline(image=np.zeros((40, 40), dtype=np.uint8))["image"].shape
        torch.Size([1, 32, 32])
    """
    in_channels = resolve_in_channels(in_channels, in_chans, owner="classification_transforms")
    return augmentation_pipeline(image_size, train, in_channels, mean, std, torch_seeded=not replayable)


class TorchSeededCompose(A.Compose):
    """An albumentations pipeline whose random draws follow torch's generator.

    albumentations draws from generators of its own, seeded from the OS, so ``seed_everything`` alone does not make
    augmentation reproducible. This pipeline reseeds them from ``torch.randint`` on every call: torch's generator
    is seeded by ``seed_everything`` in the main process and by the DataLoader in each worker
    (``base_seed + worker_id``), so a seeded run augments the same way every time and workers never repeat each other.
    """

    def __call__(self, *args: Any, force_apply: bool = False, **data: Any) -> dict[str, Any]:
        """Reseeds from torch, then applies the pipeline."""
        self.set_random_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
        return super().__call__(*args, force_apply=force_apply, **data)


def augmentation_pipeline(
    image_size: int,
    train: bool,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    torch_seeded: bool = True,
) -> A.Compose:
    """The resize + augmentation + normalisation pipeline shared by the tasks' transforms.

    Geometric steps move a ``mask`` passed alongside the image with nearest-neighbour interpolation (class indices
    and ``ignore_index`` stay exact); photometric steps touch the image only. Arguments as in
    `classification_transforms`; ``torch_seeded=False`` returns a plain ``Compose`` for seeded replay.
    """
    if int(image_size) <= 0:
        raise ConfigError(f"image_size must be positive, got {image_size!r}")
    mean, std = resolve_normalization(in_channels, mean, std)
    steps: list[A.BasicTransform] = [
        A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA, mask_interpolation=cv2.INTER_NEAREST)
    ]
    if train:
        steps += [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.0625, 0.0625),
                rotate=(-15, 15),
                border_mode=cv2.BORDER_REFLECT_101,
                mask_interpolation=cv2.INTER_NEAREST,
                p=0.5,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        ]
    # ToFloat: 8-bit arrays ÷ 255, float arrays (what `visiondistill.data.images.read_image` gives, any bit depth)
    # as they are; the augmentations before it handle both (albumentations treats float images as [0, 1]).
    steps += [A.ToFloat(), A.Normalize(mean=mean, std=std, max_pixel_value=1.0), ToTensorV2()]
    return TorchSeededCompose(steps) if train and torch_seeded else A.Compose(steps)
