"""Shared fixtures: tiny data, tiny models, a CPU-only trainer configuration."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from visiondistill.data.keypoints import ShapesKeypoints
from visiondistill.models.segmenters import SegmenterSpec

from .support import detection, keypoints, segmentation

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
# The test models are tiny: one thread is as fast, and OpenMP's spinning threads make a busy 2-core machine
# (dataloader workers, DDP processes) much slower.
torch.set_num_threads(1)


def quadrant_images(n: int = 32, size: int = 32, num_classes: int = 4, seed: int = 0) -> TensorDataset:
    """Images with one bright square; the label is the quadrant it sits in (a learnable, spatial task)."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.1 * torch.randn(n, 3, size, size, generator=generator)
    labels = torch.randint(0, num_classes, (n,), generator=generator)
    half, side = size // 2, size // 4
    for i, label in enumerate(labels.tolist()):
        top, left = (label // 2) * half + side // 2, (label % 2) * half + side // 2
        images[i, :, top : top + side, left : left + side] += 1.0
    return TensorDataset(images, labels)


@pytest.fixture
def tiny_loader() -> DataLoader:
    return DataLoader(quadrant_images(), batch_size=8)


@pytest.fixture
def trainer_kwargs(tmp_path) -> dict:
    """A fast, quiet, CPU-only Trainer configuration."""
    return {
        "default_root_dir": tmp_path,
        "max_epochs": 1,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }


@pytest.fixture(scope="session")
def quick_classification_demo(tmp_path_factory) -> Path:
    """The seconds-long classification demo (teacher, scratch, distilled CLI runs + reports), run once per session.

    Returns the root holding ``runs/``, ``data/`` and ``demo/`` (the reports).
    """
    from visiondistill.demo import main

    root = tmp_path_factory.mktemp("quick_demo")
    args = ["--task", "classification", "--quick", "--runs", str(root / "runs"), "--data-dir", str(root / "data")]
    assert main([*args, "--out", str(root / "demo")]) == 0
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A finished two-epoch `visiondistill fit` of `support.runs.distilled_config`, run once per session (read-only:
    a test that writes into it copies it first). Returns its run folder ``<root>/runs/kd``."""
    from visiondistill.cli import main

    from .support.runs import distilled_config

    root = tmp_path_factory.mktemp("trained_run")
    assert main(["fit", "--config", str(distilled_config(root, max_epochs=2))]) == 0
    return root / "runs" / "kd"


# -- task data and models shared by the tests of several packages (constants and helpers: tests/support/) --------


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    """A tiny COCO data set of squares: 16 training and 8 validation images."""
    root = tmp_path / "coco"
    detection.square_split(root, "train", 16, seed=0)
    detection.square_split(root, "val", 8, seed=1)
    return root


@pytest.fixture(scope="session")
def shapes_keypoints_dir(tmp_path_factory) -> Path:
    """A generated shapes keypoint data set (64-px images), written once per test session."""
    root = tmp_path_factory.mktemp("shapes_keypoints")
    module = ShapesKeypoints(str(root), **keypoints.SHAPES_ARGS)
    module.prepare_data()
    return root


@pytest.fixture
def seg_loader() -> DataLoader:
    return DataLoader(segmentation.square_masks(), batch_size=8)


@pytest.fixture
def small_seg_loader() -> DataLoader:
    """Eight 32-px images, each with one bright 10-px square labelled 1 or 2 on background 0, in one batch."""
    return DataLoader(segmentation.square_masks(n=8), batch_size=8)


@pytest.fixture
def seg_specs() -> tuple[SegmenterSpec, SegmenterSpec]:
    """(student, teacher) specs of two tiny U-Nets on timm's test_resnet encoder."""
    return segmentation.TINY_STUDENT, segmentation.TINY_TEACHER
