"""`visiondistill.data.loading`: ``num_workers: auto`` and the DataLoader settings every datamodule uses."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from visiondistill.core.errors import ConfigError
from visiondistill.data import loading
from visiondistill.data.classification import ImageFolderClassification, ShapesClassification
from visiondistill.data.detection import CocoDetection, ShapesDetection
from visiondistill.data.keypoints.datamodules import COCOKeypoints, ShapesKeypoints
from visiondistill.data.loading import auto_num_workers, check_num_workers, loader_kwargs, local_world_size
from visiondistill.data.medical import SyntheticLesions
from visiondistill.data.segmentation import MaskFolderSegmentation, ShapesSegmentation

DATAMODULES = [
    ImageFolderClassification,
    ShapesClassification,
    CocoDetection,
    ShapesDetection,
    MaskFolderSegmentation,
    ShapesSegmentation,
    SyntheticLesions,
    COCOKeypoints,
    ShapesKeypoints,
]


@pytest.fixture
def three_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process may run on three cores (whatever the machine has)."""
    monkeypatch.setattr(loading.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    for variable in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.parametrize("value, expected", [("auto", "auto"), (" AUTO ", "auto"), (0, 0), (6, 6), ("3", 3)])
def test_num_workers_takes_auto_or_a_count(value, expected):
    assert check_num_workers(value) == expected


@pytest.mark.parametrize("value", [-1, "many", True, 1.5, None], ids=["negative", "word", "bool", "float", "none"])
def test_other_num_workers_fail_with_the_value_named(value):
    with pytest.raises(ConfigError, match=r"num_workers.*auto") as error:
        check_num_workers(value, owner="MyData")
    assert "MyData" in str(error.value) and repr(value) in str(error.value)


@pytest.mark.parametrize(
    "world_size, cpus, expected",
    [(1, 1, 0), (1, 2, 1), (1, 4, 3), (1, 64, loading.MAX_AUTO_WORKERS), (2, 16, 7), (4, 16, 3), (8, 4, 0)],
)
def test_auto_is_the_process_share_of_the_cores_less_one_capped(world_size: int, cpus: int, expected: int):
    assert auto_num_workers(world_size, cpus=cpus) == expected


def test_auto_follows_the_affinity_mask_not_the_machine(three_cpus):
    assert loading.available_cpus() == 3
    assert loader_kwargs("auto")["num_workers"] == 2


def test_local_world_size_from_the_trainer_then_torchrun(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert local_world_size(None) == 4
    assert local_world_size(type("Trainer", (), {"num_devices": 2})()) == 2
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert local_world_size(None) == 1


def test_loader_kwargs_persist_and_prefetch_only_with_workers():
    assert loader_kwargs(0, pin_memory=False) == {"num_workers": 0, "persistent_workers": False, "pin_memory": False}
    with_workers = loader_kwargs(3, pin_memory=True, prefetch_factor=6)
    assert with_workers == {"num_workers": 3, "persistent_workers": True, "pin_memory": True, "prefetch_factor": 6}
    assert loader_kwargs(0)["pin_memory"] is torch.cuda.is_available()


@pytest.mark.parametrize("datamodule", DATAMODULES, ids=[d.__name__ for d in DATAMODULES])
def test_every_datamodule_defaults_to_auto_and_checks_the_value(datamodule: type, tmp_path: Path):
    assert inspect.signature(datamodule).parameters["num_workers"].default == "auto"
    with pytest.raises(ConfigError, match="num_workers"):
        datamodule(data_dir=str(tmp_path), num_workers=-1)


@pytest.mark.parametrize("datamodule", [ShapesClassification, ShapesDetection], ids=["splits", "detection"])
def test_datamodule_loaders_use_the_resolved_settings(datamodule: type, tmp_path: Path, three_cpus):
    module = datamodule(str(tmp_path), image_size=16, num_train=4, num_val=2, num_test=0, batch_size=2)
    module.prepare_data()
    module.setup("fit")
    loader = module.train_dataloader()
    assert (loader.num_workers, loader.persistent_workers, loader.prefetch_factor) == (2, True, loading.PREFETCH_FACTOR)
    assert loader.pin_memory is torch.cuda.is_available()  # no trainer attached: pinned when CUDA is there
    module.num_workers = 0  # an int is used as it is
    assert module.val_dataloader().num_workers == 0
