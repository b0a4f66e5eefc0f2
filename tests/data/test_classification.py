"""Tests of the classification transforms, the ImageFolder dataset and the classification data modules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visiondistill.data import (
    SHAPE_CLASSES,
    CorruptImageError,
    DataError,
    ImageFolderClassification,
    ImageFolderDataset,
    MissingDataError,
    ShapesClassification,
    classification_transforms,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*has no images of class")

SIZE = 32
COUNTS = {"num_train": 24, "num_val": 12, "num_test": 6}


def shapes_module(data_dir, **kwargs) -> ShapesClassification:
    defaults = {"image_size": SIZE, "batch_size": 8, "num_workers": 0, **COUNTS}
    return ShapesClassification(str(data_dir), **{**defaults, **kwargs})


def make_image_folder(root, classes=("cat", "dog"), per_class=3, size=12):
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.full((size, size, 3), 40 * i, dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("train", [True, False])
def test_transforms_return_normalised_chw_tensors(in_channels, train):
    pipeline = classification_transforms(SIZE, train=train, in_channels=in_channels)
    shape = (40, 40, 3) if in_channels == 3 else (40, 40)
    image = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    out = pipeline(image=image)["image"]
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.shape == (in_channels, SIZE, SIZE)
    assert out.min() < 0 < out.max()  # normalised, not in [0, 1]


def test_transforms_reject_mismatched_statistics():
    with pytest.raises(ValueError, match="mean"):
        classification_transforms(SIZE, train=False, in_channels=3, mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="in_channels must be 1"):
        classification_transforms(SIZE, train=False, in_channels=2)


def test_image_folder_dataset_labels_and_loading(tmp_path):
    root = make_image_folder(tmp_path / "train")
    dataset = ImageFolderDataset(root)
    assert dataset.class_names == ["cat", "dog"] and len(dataset) == 6
    assert dataset.targets == [0, 0, 0, 1, 1, 1]
    image, label = dataset[4]
    assert image.shape == (3, 12, 12) and image.dtype == torch.float32 and label == 1
    gray = ImageFolderDataset(root, in_channels=1, class_names=["dog", "cat"])
    assert gray[0][0].shape == (1, 12, 12) and gray[0][1] == 0 and gray.targets[-1] == 1


def test_class_indices_follow_sorted_folder_names_whatever_order_the_file_system_lists(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "data" / "train", classes=("bee", "ant", "cow"), per_class=1)
    make_image_folder(tmp_path / "data" / "val", classes=("bee", "ant", "cow"), per_class=1)
    listing = Path.iterdir

    def reverse_sorted(self: Path):  # a file system that lists entries in anything but name order
        return iter(sorted(listing(self), reverse=True))

    monkeypatch.setattr(Path, "iterdir", reverse_sorted)
    assert [p.name for p in root.iterdir()] == ["cow", "bee", "ant"]
    dataset = ImageFolderDataset(root)
    assert dataset.class_names == ["ant", "bee", "cow"]
    assert [(path.parent.name, label) for path, label in dataset.samples] == [("ant", 0), ("bee", 1), ("cow", 2)]
    datamodule = ImageFolderClassification(str(tmp_path / "data"), image_size=12, batch_size=3, num_workers=0)
    datamodule.setup("fit")
    assert datamodule.class_names == ["ant", "bee", "cow"] and datamodule.val_dataset.targets == [0, 1, 2]


def test_image_folder_dataset_reports_bad_folders(tmp_path):
    with pytest.raises(MissingDataError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No class folders"):
        ImageFolderDataset(tmp_path / "empty")
    root = make_image_folder(tmp_path / "train")
    (root / "bird").mkdir()
    with pytest.raises(DataError, match=r"\['bird'\].*no images"):
        ImageFolderDataset(root)
    with pytest.raises(DataError, match=r"\['bird'\].*not among the expected classes"):
        ImageFolderDataset(root, class_names=["cat", "dog"])


def test_corrupt_image_is_named(tmp_path):
    root = make_image_folder(tmp_path / "train")
    bad = root / "dog" / "9.png"
    bad.write_bytes(b"this is not a png" * 10)
    dataset = ImageFolderDataset(root)
    with pytest.raises(CorruptImageError, match=r"9\.png.*delete it") as info:
        dataset.verify()
    assert info.value.path == bad
    with pytest.raises(CorruptImageError, match=r"9\.png"):
        dataset[len(dataset) - 1]


def test_truncated_image_fails_in_setup(tmp_path):
    make_image_folder(tmp_path / "train")
    make_image_folder(tmp_path / "val")
    good = (tmp_path / "val" / "cat" / "1.png").read_bytes()
    (tmp_path / "val" / "cat" / "1.png").write_bytes(good[: len(good) // 2])
    dm = ImageFolderClassification(str(tmp_path), image_size=12, num_workers=0)
    with pytest.raises(CorruptImageError, match=r"val.cat.1\.png"):
        dm.setup("fit")


def test_image_folder_module_falls_back_to_val_for_test(tmp_path):
    make_image_folder(tmp_path / "train")
    make_image_folder(tmp_path / "val", per_class=2)
    dm = ImageFolderClassification(str(tmp_path), image_size=16, batch_size=4, num_workers=0)
    assert dm.num_classes == 2 and dm.class_names == ["cat", "dog"]
    dm.setup("test")
    assert dm.test_split == "val" and len(dm.test_dataloader().dataset) == 4
    images, labels = next(iter(dm.predict_dataloader()))
    assert images.shape == (4, 3, 16, 16) and labels.dtype == torch.int64


def test_image_folder_module_missing_split(tmp_path):
    make_image_folder(tmp_path / "train")
    dm = ImageFolderClassification(str(tmp_path), num_workers=0)
    with pytest.raises(MissingDataError, match=r"'.*val' does not exist"):
        dm.setup("fit")
    with pytest.raises(MissingDataError, match="nowhere"):
        ImageFolderClassification(str(tmp_path / "nowhere")).setup("fit")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A shapes data module that generated its data set in prepare_data."""
    data_dir = tmp_path_factory.mktemp("shapes")
    dm = shapes_module(data_dir)
    assert dm.num_classes == len(SHAPE_CLASSES)  # known before any data exists
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_shapes_module_generates_then_reuses(generated, monkeypatch):
    meta = json.loads((generated.data_dir / "meta.json").read_text())
    assert meta["tasks"] == ["classification"]
    assert meta["splits"] == {"train": 24, "val": 12, "test": 6}
    assert len(generated.train_dataset) == 24 and len(generated.val_dataset) == 12
    assert generated.class_names == list(SHAPE_CLASSES)

    def fail(*args, **kwargs):
        raise AssertionError("the data set should have been reused, not regenerated")

    monkeypatch.setattr("visiondistill.data.generated.write_shapes_dataset", fail)
    again = shapes_module(generated.data_dir)
    again.prepare_data()
    again.setup("test")
    assert len(again.test_dataset) == 6


def test_shapes_labels_follow_shape_classes_order(generated):
    dataset = generated.val_dataset
    for path, label in dataset.samples:
        assert path.parent.name == SHAPE_CLASSES[label]


def test_shapes_rgb_batches(generated):
    images, labels = next(iter(generated.train_dataloader()))
    assert images.shape == (8, 3, SIZE, SIZE) and images.dtype == torch.float32
    assert labels.shape == (8,) and labels.dtype == torch.int64
    assert 0 <= labels.min() and labels.max() < len(SHAPE_CLASSES)
    first = [labels.tolist() for _, labels in generated.train_dataloader()]
    second = [labels.tolist() for _, labels in generated.train_dataloader()]
    assert first == second  # the shuffle order follows the seed


def test_shapes_grayscale_batches(tmp_path):
    dm = shapes_module(tmp_path, in_channels=1, num_train=8, num_val=4, num_test=0)
    dm.prepare_data()
    dm.setup("fit")
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (4, 1, SIZE, SIZE) and images.dtype == torch.float32
    assert json.loads((tmp_path / "meta.json").read_text())["generator"]["grayscale"] is True
    dm.setup("test")
    assert dm.test_split == "val"


def test_shapes_missing_without_generate_names_the_path(tmp_path):
    dm = shapes_module(tmp_path / "absent", generate=False)
    with pytest.raises(MissingDataError, match=r"absent.classification' does not exist.*visiondistill synth --out"):
        dm.prepare_data()
    with pytest.raises(MissingDataError, match="absent"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_size": 24}, "image_size: on disk 32, requested 24"),
        ({"num_train": 30}, "splits: on disk"),
        ({"seed": 1}, "seed: on disk 0, requested 1"),
        ({"in_channels": 1}, "grayscale: on disk False, requested True"),
    ],
)
def test_shapes_meta_mismatch_raises(generated, change, message):
    dm = shapes_module(generated.data_dir, **change)
    with pytest.raises(DataError, match=message):
        dm.prepare_data()
    with pytest.raises(DataError, match="delete"):
        dm.setup("fit")


def test_shapes_module_hyperparameters(generated):
    assert generated.hparams["data_dir"] == str(generated.data_dir)
    assert generated.hparams["num_train"] == 24 and generated.hparams["generate"] is True
