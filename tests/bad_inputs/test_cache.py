"""Bad inputs to the teacher-output cache and replayable views: each refused with the culprit named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from visiondistill.core.errors import ConfigError
from visiondistill.data import ShapesClassification, ShapesDetection, ShapesSegmentation
from visiondistill.distill import TeacherCacheError, TeacherOutputCache
from visiondistill.tasks import ClassificationTask, SegmentationTask

from ..support.bad_inputs import expect_cli_error, expect_user_error, unchanged
from ..support.cli import tiny_overrides
from ..support.segmentation import TINY_STUDENT as TINY_SEGMENTER

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "classification" / "shapes_kd_cached.yaml"

pytestmark = pytest.mark.filterwarnings("ignore:.*has no images of class", "ignore:.*num_workers")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> ShapesClassification:
    module = ShapesClassification(
        str(tmp_path_factory.mktemp("bad_cache") / "shapes"),
        image_size=32,
        num_workers=0,
        num_train=8,
        num_val=4,
        num_test=0,
        num_views=2,
    )
    module.prepare_data()
    module.setup("fit")
    return module


def teacher():
    return ClassificationTask(student={"name": "test_resnet"}, teacher={"name": "test_resnet"}, num_classes=6).teacher


@pytest.mark.parametrize("top_k", [0, -3, 2.5, True], ids=["zero", "negative", "fraction", "bool"])
def test_a_bad_top_k_is_refused(top_k):
    expect_user_error(lambda: TeacherOutputCache(top_k=top_k), "top_k", repr(top_k), error_type=ConfigError)


@pytest.mark.parametrize("num_views", [0, -1, "8"], ids=["zero", "negative", "string"])
def test_a_bad_num_views_is_refused(num_views, tmp_path):
    expect_user_error(
        lambda: ShapesClassification(str(tmp_path), num_views=num_views),
        "num_views",
        repr(num_views),
        error_type=ConfigError,
    )


@pytest.mark.parametrize("module", [ShapesSegmentation, ShapesDetection], ids=["segmentation", "detection"])
def test_a_bad_num_views_is_refused_by_the_dense_datamodules(module, tmp_path):
    expect_user_error(lambda: module(str(tmp_path), num_views=0), "num_views", "0", error_type=ConfigError)


def test_top_k_on_a_segmentation_teacher_is_refused(tmp_path):
    data = ShapesSegmentation(
        str(tmp_path / "shapes"), image_size=32, num_workers=0, num_train=4, num_val=2, num_test=0, num_views=1
    )
    data.prepare_data()
    data.setup("fit")
    segmenter = SegmentationTask(student=TINY_SEGMENTER, num_classes=7, ignore_index=None).student
    expect_user_error(
        lambda: TeacherOutputCache(top_k=3).fill(segmenter, data.train_dataset),
        "top_k",
        "segmentation map",
        "top_k: null",
        error_type=TeacherCacheError,
    )


def test_a_data_set_without_views_is_refused(data):
    plain = ShapesClassification(str(data.data_dir), image_size=32, num_workers=0, num_train=8, num_val=4, num_test=0)
    plain.setup("fit")
    expect_user_error(
        lambda: TeacherOutputCache().open(teacher(), plain.train_dataset), "num_views", error_type=TeacherCacheError
    )


def test_a_folder_that_is_not_a_cache_is_refused_and_left_alone(data, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with unchanged(tmp_path):
        expect_user_error(
            lambda: TeacherOutputCache(directory=str(tmp_path)).open(teacher(), data.train_dataset),
            str(tmp_path),
            "meta.json",
            error_type=TeacherCacheError,
        )


def test_a_corrupt_meta_file_is_refused(data, tmp_path):
    (tmp_path / "meta.json").write_text("{not json")
    expect_user_error(
        lambda: TeacherOutputCache(directory=str(tmp_path)).open(teacher(), data.train_dataset),
        "meta.json",
        "delete",
        error_type=TeacherCacheError,
    )


def test_another_top_k_is_refused(data, tmp_path):
    TeacherOutputCache(directory=str(tmp_path), top_k=2).fill(teacher(), data.train_dataset)
    with unchanged(tmp_path):
        expect_user_error(
            lambda: TeacherOutputCache(directory=str(tmp_path), top_k=3).open(teacher(), data.train_dataset),
            "top_k",
            "2 -> 3",
            error_type=TeacherCacheError,
        )
    assert json.loads((tmp_path / "meta.json").read_text())["top_k"] == 2


@pytest.mark.parametrize("cache", ["missing", "in_memory"], ids=["no-cache-callback", "in-memory-cache"])
def test_cache_teacher_needs_a_cache_folder_in_the_config(cache, tmp_path, capsys):
    config = yaml.safe_load(CONFIG.read_text())
    config["model"]["init_args"]["teacher"] = {"name": "test_resnet"}
    callbacks = config["trainer"]["callbacks"]
    if cache == "missing":
        del callbacks[1]
    else:
        callbacks[1]["init_args"]["directory"] = None
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    overrides = [arg for arg in tiny_overrides(tmp_path, "run") if arg.startswith("--data.")]
    expect_cli_error(["cache-teacher", "--config", str(path), *overrides], capsys, "TeacherOutputCache", "directory")
