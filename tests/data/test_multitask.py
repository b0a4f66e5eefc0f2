"""ShapesMultiTask: a class and a segmentation mask per image of the synthetic shapes (docs/multitask.md)."""

from __future__ import annotations

import torch

from visiondistill.data import SHAPE_CLASSES, ShapesMultiTask
from visiondistill.data.multitask import dominant_class


def test_dominant_class_counts_pixels_per_class():
    mask = torch.tensor([[0, 1, 1, 2], [0, 2, 2, 2], [255, 255, 255, 255]])
    assert dominant_class(mask, num_classes=3, ignore_index=255) == 1  # value 2: 4 pixels, value 1: 2
    assert dominant_class(torch.tensor([[1, 1, 2]]), num_classes=3) == 0
    assert dominant_class(torch.zeros(2, 2, dtype=torch.long), num_classes=3) == -1


def test_shapes_multitask_gives_a_class_and_a_mask_per_image(tmp_path):
    data = ShapesMultiTask(
        str(tmp_path / "shapes"), image_size=32, batch_size=4, num_workers=0, num_train=8, num_val=4, num_test=0
    )
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    assert sorted(batch) == ["image", "label", "mask"]
    assert batch["image"].shape == (4, 3, 32, 32) and batch["mask"].shape == (4, 32, 32)
    for mask, label in zip(batch["mask"], batch["label"], strict=True):
        counts = torch.bincount(mask.flatten(), minlength=7)[1:]
        assert int(label) == int(counts.argmax()) and counts[label] > 0
    assert data.head_classes["cls"] == list(SHAPE_CLASSES)
    assert data.head_classes["seg"] == ["background", *data.head_classes["cls"]]
