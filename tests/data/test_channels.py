"""The input-channel field is spelled ``in_channels``; the older ``in_chans`` still works, with a warning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from visiondistill.data import (
    CocoDetection,
    COCOKeypoints,
    ImageFolderClassification,
    ImageFolderDataset,
    MaskFolderSegmentation,
    ShapesClassification,
    ShapesDetection,
    ShapesKeypoints,
    ShapesSegmentation,
    classification_transforms,
)
from visiondistill.data.channels import resolve_in_channels

ROOT = Path(__file__).resolve().parents[2]

DATAMODULES = {
    "ImageFolderClassification": lambda tmp, **kw: ImageFolderClassification(str(tmp), **kw),
    "ShapesClassification": lambda tmp, **kw: ShapesClassification(str(tmp), **kw),
    "CocoDetection": lambda tmp, **kw: CocoDetection(str(tmp), **kw),
    "ShapesDetection": lambda tmp, **kw: ShapesDetection(str(tmp), **kw),
    "MaskFolderSegmentation": lambda tmp, **kw: MaskFolderSegmentation(str(tmp), num_classes=2, **kw),
    "ShapesSegmentation": lambda tmp, **kw: ShapesSegmentation(str(tmp), **kw),
    "COCOKeypoints": lambda tmp, **kw: COCOKeypoints(str(tmp), **kw),
    "ShapesKeypoints": lambda tmp, **kw: ShapesKeypoints(str(tmp), **kw),
}


def test_resolve_in_channels_rules():
    assert resolve_in_channels(1) == 1 and resolve_in_channels(3) == 3
    with pytest.warns(FutureWarning, match=r"X: 'in_chans' is deprecated, write 'in_channels: 1'"):
        assert resolve_in_channels(3, 1, owner="X") == 1  # in_channels at its default: in_chans decides
    with pytest.warns(FutureWarning):
        assert resolve_in_channels(1, 1) == 1
    with pytest.raises(ValueError, match=r"X: in_channels=1 and the deprecated in_chans=3 disagree"):
        resolve_in_channels(1, 3, owner="X")
    for bad in (2, 0, True):
        with pytest.raises(ValueError, match=r"in_channels must be 1 \(grayscale\) or 3 \(RGB\)"):
            resolve_in_channels(bad)


@pytest.mark.parametrize("name", sorted(DATAMODULES))
def test_datamodules_take_in_channels_and_the_deprecated_in_chans(name, tmp_path):
    make = DATAMODULES[name]
    assert make(tmp_path).in_channels == 3
    assert make(tmp_path, in_channels=1).in_channels == 1
    with pytest.warns(FutureWarning, match=rf"{name}: 'in_chans' is deprecated") as record:
        old = make(tmp_path, in_chans=1)
    assert old.in_channels == 1
    assert sum(issubclass(w.category, FutureWarning) for w in record) == 1  # once, not once per base class
    with pytest.warns(FutureWarning, match=r"in_chans is deprecated: read in_channels"):
        assert old.in_chans == 1
    with pytest.raises(ValueError, match="in_channels must be 1"):
        make(tmp_path, in_channels=2)


def test_classification_hyperparameters_record_the_resolved_count(tmp_path):
    with pytest.warns(FutureWarning):
        dm = ShapesClassification(str(tmp_path), in_chans=1)
    assert dm.hparams["in_channels"] == 1 and "in_chans" not in dm.hparams


def test_dataset_and_transforms_take_the_deprecated_keyword(tmp_path):
    (tmp_path / "cat").mkdir()
    from PIL import Image

    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / "cat" / "0.png")
    with pytest.warns(FutureWarning, match="ImageFolderDataset"):
        dataset = ImageFolderDataset(tmp_path, in_chans=1)
    assert dataset.in_channels == 1 and dataset[0][0].shape == (1, 8, 8)
    with pytest.warns(FutureWarning, match="classification_transforms"):
        pipeline = classification_transforms(16, train=False, in_chans=1)
    assert pipeline(image=np.zeros((20, 20), np.uint8))["image"].shape == (1, 16, 16)


def test_an_old_config_with_data_in_chans_still_loads(tmp_path):
    from visiondistill.cli import VisionDistillCLI

    config = yaml.safe_load((ROOT / "configs" / "classification" / "shapes_student_scratch.yaml").read_text())
    config["data"]["init_args"]["in_chans"] = 1  # as written before the rename
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(config))
    args = ["--config", str(path), f"--trainer.default_root_dir={tmp_path}", f"--data.init_args.data_dir={tmp_path}"]
    with pytest.warns(FutureWarning, match="ShapesClassification: 'in_chans' is deprecated"):
        cli = VisionDistillCLI(args=args, run=False)
    assert cli.datamodule.in_channels == 1
