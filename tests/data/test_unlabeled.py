"""Unlabeled images in the datamodules: the seeded stratified split, the unlabeled folder, the combined loader."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_lightning.utilities.combined_loader import CombinedLoader
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from visiondistill.data import ImageFolderClassification, MaskFolderSegmentation
from visiondistill.data.unlabeled import segmentation_strata, stratified_split


def image_folder(root: Path, classes: dict[str, int], size: int = 12) -> Path:
    """``root/train/<class>/i.png`` with ``classes[name]`` images each, and a one-image-per-class ``val``."""
    for split, counts in (("train", classes), ("val", dict.fromkeys(classes, 1))):
        for c, (name, count) in enumerate(counts.items()):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.full((size, size, 3), (37 * c + 5 * i) % 256, dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def loose_images(folder: Path, count: int, size: int = 20) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((size, size + 4, 3), 10 * i, dtype=np.uint8)).save(folder / f"u{i}.jpg")
    return folder


def module(root: Path, **kwargs) -> ImageFolderClassification:
    defaults = {"image_size": 16, "batch_size": 4, "num_workers": 0, "verify_images": False}
    return ImageFolderClassification(str(root), **{**defaults, **kwargs})


def test_stratified_split_keeps_the_fraction_of_every_class_and_follows_the_seed():
    strata = [0] * 40 + [1] * 20 + [2] * 60
    labeled, unlabeled = stratified_split(strata, 0.1, seed=3)
    assert [sum(strata[i] == c for i in labeled) for c in range(3)] == [4, 2, 6]
    assert sorted(labeled + unlabeled) == list(range(120)) and not set(labeled) & set(unlabeled)
    assert stratified_split(strata, 0.1, seed=3) == (labeled, unlabeled)  # seeded: the same on every rank
    assert stratified_split(strata, 0.1, seed=4)[0] != labeled
    assert stratified_split(strata, 1.0, seed=0) == (list(range(120)), [])


def test_segmentation_strata_are_the_rarest_class_of_each_mask():
    present = [[0, 1], [0, 1], [0, 1, 2], [0], [0, 2, 3, 255]]
    # class counts: 1 in 3 masks, 2 in 2, 3 in 1 -> each mask's rarest; background-only is 0; 255 is skipped
    assert segmentation_strata(present, num_classes=4) == [1, 1, 2, 0, 3]


def test_labeled_fraction_splits_the_training_set(tmp_path: Path):
    dm = module(image_folder(tmp_path, {"a": 10, "b": 20}), labeled_fraction=0.2, labeled_seed=1)
    dm.setup("fit")
    labels = [dm.train_dataset[i][1] for i in range(len(dm.train_dataset))]
    assert sorted(labels) == [0, 0] + [1] * 4
    assert len(dm.unlabeled_dataset) == 24
    image = dm.unlabeled_dataset[0]
    assert isinstance(image, torch.Tensor) and image.shape == (3, 16, 16)  # an image alone, no label
    assert len(dm.val_dataset) == 2  # validation keeps every label


def test_unlabeled_dir_is_read_with_the_train_transform_and_interleaved(tmp_path: Path):
    root = image_folder(tmp_path / "data", {"a": 3, "b": 3})
    dm = module(root, unlabeled_dir=str(loose_images(tmp_path / "extra" / "nested", 10)))
    dm.setup("fit")
    assert len(dm.unlabeled_dataset) == 10 and dm.unlabeled_dataset[0].shape == (3, 16, 16)
    loader = dm.train_dataloader()
    assert isinstance(loader, CombinedLoader)
    batches = list(loader)
    # max_size_cycle: one epoch is one pass over the longer loader (10 unlabeled images / 4 = 3 batches); the
    # 6 labeled images (2 batches) restart once.
    assert len(batches) == len(loader) == 3
    batch = batches[0][0] if isinstance(batches[0], tuple) else batches[0]
    images, targets = batch["labeled"]
    assert images.shape == (4, 3, 16, 16) and targets.shape == (4,) and batch["unlabeled"].shape == (4, 3, 16, 16)


def test_without_unlabeled_images_the_train_loader_is_unchanged(tmp_path: Path):
    dm = module(image_folder(tmp_path, {"a": 3, "b": 3}))
    dm.setup("fit")
    assert isinstance(dm.train_dataloader(), DataLoader) and dm.unlabeled_dataset is None


def test_segmentation_fraction_is_stratified_on_mask_classes(tmp_path: Path):
    for split, count in (("train", 20), ("val", 2)):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir(parents=True)
        for i in range(count):
            mask = np.zeros((8, 8), np.uint8)
            mask[:2, :2] = 1 if i % 2 else 2  # classes 1 and 2 in alternate images
            Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / split / "images" / f"{i}.png")
            Image.fromarray(mask).save(tmp_path / split / "masks" / f"{i}.png")
    dm = MaskFolderSegmentation(
        str(tmp_path), num_classes=3, image_size=8, batch_size=2, num_workers=0, labeled_fraction=0.2, verify=False
    )
    dm.setup("fit")
    masks = [dm.train_dataset[i][1] for i in range(len(dm.train_dataset))]
    assert sorted(int(m.max()) for m in masks) == [1, 1, 2, 2] and len(dm.unlabeled_dataset) == 16


@pytest.mark.parametrize(
    "labeled, unlabeled", [(7, 13), (13, 7), (5, 5)], ids=["more-unlabeled", "more-labeled", "even"]
)
def test_every_rank_gets_the_same_number_of_batches(labeled: int, unlabeled: int):
    """What Lightning does in DDP: one DistributedSampler per loader of the CombinedLoader (each pads to equal shares).

    Every rank must step the same number of times, or the ranks that finish first wait forever for the others'
    gradients. The counts are uneven on purpose: 7 samples over 2 ranks is 4 and 3 without padding.
    """
    lengths = []
    for rank in range(2):
        loaders = {
            name: DataLoader(
                TensorDataset(torch.zeros(count, 1)),
                batch_size=2,
                sampler=DistributedSampler(TensorDataset(torch.zeros(count, 1)), num_replicas=2, rank=rank, seed=0),
            )
            for name, count in (("labeled", labeled), ("unlabeled", unlabeled))
        }
        combined = CombinedLoader(loaders, mode="max_size_cycle")
        steps = sum(1 for _ in combined)
        lengths.append((len(combined), steps))
    per_rank = math.ceil(max(labeled, unlabeled) / 2)  # the longer loader's padded share
    assert lengths[0] == lengths[1] == (math.ceil(per_rank / 2), math.ceil(per_rank / 2))
