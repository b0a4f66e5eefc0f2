"""Training augmentation is reproducible under a torch seed and differs between seeds."""

from __future__ import annotations

import numpy as np
import torch

from visiondistill.data.segmentation import segmentation_transforms
from visiondistill.data.transforms import TorchSeededCompose, classification_transforms


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)


def _augmented(transform, seed: int, n: int = 6) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.stack([transform(image=_image(i))["image"] for i in range(n)])


def test_training_augmentation_follows_the_torch_seed():
    transform = classification_transforms(32, train=True)
    assert isinstance(transform, TorchSeededCompose)
    first, again, other = _augmented(transform, 0), _augmented(transform, 0), _augmented(transform, 1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_joint_augmentation_keeps_image_and_mask_together_under_a_seed():
    transform = segmentation_transforms(32, train=True, in_channels=3)
    mask = np.zeros((40, 40), np.uint8)
    mask[5:15, 5:25] = 2
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs.append([transform(image=_image(i), mask=mask) for i in range(4)])
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(
            torch.as_tensor(a["mask"]), torch.as_tensor(b["mask"])
        )


def test_evaluation_transforms_draw_nothing_from_torch():
    transform = classification_transforms(32, train=False)
    torch.manual_seed(0)
    expected = torch.rand(())
    torch.manual_seed(0)
    transform(image=_image())
    assert torch.equal(torch.rand(()), expected)
