"""Bad unlabeled-image settings: each refused with our own error that names the setting, the value and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visiondistill.core.errors import ConfigError
from visiondistill.data import ImageFolderClassification, ShapesClassification
from visiondistill.data.errors import DataError, MissingDataError

from ..support.bad_inputs import expect_user_error


def image_folder(root: Path, counts: dict[str, int]) -> Path:
    for split, per_class in (("train", counts), ("val", dict.fromkeys(counts, 1))):
        for name, count in per_class.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(np.full((8, 8, 3), (20 * i) % 256, np.uint8)).save(root / split / name / f"{i}.png")
    return root


def module(root: Path, **kwargs) -> ImageFolderClassification:
    return ImageFolderClassification(str(root), image_size=8, batch_size=2, num_workers=0, **kwargs)


def test_missing_unlabeled_dir_is_named(tmp_path: Path):
    dm = module(image_folder(tmp_path / "data", {"a": 2, "b": 2}), unlabeled_dir=str(tmp_path / "nowhere"))
    expect_user_error(lambda: dm.setup("fit"), "unlabeled_dir", "nowhere", error_type=MissingDataError)


def test_empty_unlabeled_dir_is_named(tmp_path: Path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    dm = module(image_folder(tmp_path / "data", {"a": 2, "b": 2}), unlabeled_dir=str(tmp_path / "empty"))
    expect_user_error(lambda: dm.setup("fit"), "unlabeled_dir", "empty", "no images", error_type=DataError)


@pytest.mark.parametrize(
    "fraction", [0, -0.1, 1.5, "half", float("nan")], ids=["zero", "negative", "above-1", "text", "nan"]
)
def test_labeled_fraction_outside_zero_one_is_refused_at_construction(tmp_path: Path, fraction):
    expect_user_error(
        lambda: ShapesClassification(str(tmp_path), labeled_fraction=fraction, generate=False),
        "labeled_fraction",
        "(0, 1]",
        error_type=ConfigError,
    )


def test_fraction_that_leaves_a_class_without_labels_names_the_class(tmp_path: Path):
    dm = module(image_folder(tmp_path, {"common": 40, "rare": 3}), labeled_fraction=0.1)
    expect_user_error(
        lambda: dm.setup("fit"), "labeled_fraction", "'rare'", "raise labeled_fraction", error_type=DataError
    )
