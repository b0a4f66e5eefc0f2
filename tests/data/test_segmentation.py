"""Mask-folder data: reading, ignore_index, joint transforms, and every bad input named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visiondistill.data import (
    DataError,
    MaskFolderDataset,
    MaskFolderSegmentation,
    MissingDataError,
    ShapesSegmentation,
    SyntheticLesions,
    segmentation_transforms,
)


def write_split(root: Path, n: int = 4, size: int = 32, ignore: bool = True) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        mask[4:12, 4:12] = 1 + i % 2
        if ignore:
            mask[0, :] = 255
        image = np.repeat((mask * 60)[..., None], 3, axis=2).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i:03d}.png")
    return root


def test_folder_reads_pairs_and_keeps_ignore_index(tmp_path: Path):
    split = write_split(tmp_path / "train")
    dataset = MaskFolderDataset(split, num_classes=3, transform=segmentation_transforms(32, train=False))
    image, mask = dataset[1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert mask.dtype == torch.long and mask.shape == (32, 32)
    assert set(mask.unique().tolist()) == {0, 2, 255}
    assert (mask[0] == 255).all()


def test_joint_transforms_move_image_and_mask_together():
    image = np.zeros((40, 40), np.uint8)
    mask = np.zeros((40, 40), np.uint8)
    image[5:15, 20:30], mask[5:15, 20:30] = 200, 1
    pipeline = segmentation_transforms(40, train=True, in_channels=1)
    for _ in range(8):
        out = pipeline(image=image, mask=mask)
        bright = out["image"][0] > out["image"][0].mean()
        labelled = out["mask"] == 1
        assert (bright == labelled).float().mean() > 0.97
        assert set(out["mask"].unique().tolist()) <= {0, 1}


def test_datamodule_batches_and_ignore_index_in_the_task_loss(tmp_path: Path):
    write_split(tmp_path / "train")
    write_split(tmp_path / "val")
    dm = MaskFolderSegmentation(str(tmp_path), class_names=["bg", "a", "b"], image_size=32, batch_size=2, num_workers=0)
    dm.setup("fit")
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 32, 32) and masks.shape == (2, 32, 32)
    assert dm.test_split == "val" and dm.num_classes == 3


def test_image_and_mask_of_different_sizes_name_both_files(tmp_path: Path):
    split = write_split(tmp_path / "train", n=2)
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(split / "masks" / "001.png")
    dataset = MaskFolderDataset(split, num_classes=3)
    with pytest.raises(DataError, match=r"001\.png' is 32x32 .* mask '.*001\.png' is 24x20"):
        dataset.verify()
    with pytest.raises(DataError, match=r"same size"):
        dataset[1]


def test_mask_values_beyond_the_classes_are_listed(tmp_path: Path):
    split = write_split(tmp_path / "train", n=2)
    mask = np.zeros((32, 32), np.uint8)
    mask[0, 0], mask[1, 1] = 7, 9
    Image.fromarray(mask).save(split / "masks" / "000.png")
    dataset = MaskFolderDataset(split, num_classes=3)
    with pytest.raises(
        DataError, match=r"000\.png' holds values \[7, 9\].*valid values are 0\.\.2 and ignore_index=255"
    ):
        dataset.verify()


def test_missing_mask_names_the_image_and_the_expected_file(tmp_path: Path):
    split = write_split(tmp_path / "train", n=3)
    (split / "masks" / "002.png").unlink()
    with pytest.raises(
        MissingDataError, match=r"1 image\(s\) have no mask file: '.*images/002\.png' \(expected '.*masks/002\.png'\)"
    ):
        MaskFolderDataset(split, num_classes=3)


def test_missing_split_folder_and_colour_masks(tmp_path: Path):
    with pytest.raises(MissingDataError, match="images"):
        MaskFolderDataset(tmp_path / "nowhere", num_classes=2)
    split = write_split(tmp_path / "train", n=1)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(split / "masks" / "000.png")
    with pytest.raises(DataError, match="single-channel"):
        MaskFolderDataset(split, num_classes=2).verify()


def test_shapes_segmentation_generates_once_and_checks_meta(tmp_path: Path):
    args = {"data_dir": str(tmp_path), "image_size": 32, "num_train": 8, "num_val": 4, "num_test": 0, "num_workers": 0}
    dm = ShapesSegmentation(**args)
    dm.prepare_data()
    dm.setup("fit")
    images, masks = dm.train_dataset[0]
    assert images.shape == (3, 32, 32) and int(masks.max()) <= 6 and dm.num_classes == 7
    with pytest.raises(DataError, match="does not match"):
        ShapesSegmentation(**{**args, "num_train": 9}).prepare_data()


def test_synthetic_lesions_are_single_channel_and_imbalanced(tmp_path: Path):
    args = {"data_dir": str(tmp_path), "image_size": 32, "num_train": 12, "num_val": 4, "num_test": 0, "num_workers": 0}
    dm = SyntheticLesions(**args)
    dm.prepare_data()
    dm.setup("fit")
    masks = torch.stack([dm.train_dataset[i][1] for i in range(12)])
    assert dm.train_dataset[0][0].shape == (1, 32, 32)
    assert dm.class_names == ["background", "nodule", "cyst", "calcification"]
    assert 0.0 < (masks > 0).float().mean() < 0.15  # small, rare lesions
    with pytest.raises(DataError, match="does not match"):
        SyntheticLesions(**{**args, "num_lesion_classes": 2}).prepare_data()
