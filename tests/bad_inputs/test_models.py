"""Bad model choices: unknown names in each source, a hub id absent from the local cache, a model class that does not
exist, local weights for another class count without ``head: reinit``, class maps that do not fit. Each is refused
with our own error naming the culprit and the fix, before any training.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import constants

from visiondistill.core.errors import ConfigError
from visiondistill.distill import LogitDistillation
from visiondistill.models import CheckpointError, ClassifierSpec, create_classifier
from visiondistill.tasks import ClassificationTask

from ..support.bad_inputs import expect_cli_error, expect_user_error

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "classification" / "shapes_student_scratch.yaml"


def _imagenet_like_file(folder: Path) -> str:
    path = folder / "ten_classes.pth"
    torch.save(timm.create_model("test_resnet", num_classes=10).state_dict(), path)
    return str(path)


def _kd_with_class_map(class_map) -> Callable[[], object]:
    callback = LogitDistillation(class_map=class_map)
    return lambda: callback.compute_loss(None, None, torch.zeros(2, 3), torch.zeros(2, len(class_map)))


CASES: dict[str, tuple[Callable[[Path], Callable[[], object]], type, tuple[str, ...]]] = {
    "unknown-torchvision-name": (
        lambda _tmp: lambda: create_classifier(ClassifierSpec(name="torchvision/resnet_18"), 4, "student"),
        ConfigError,
        ("unknown torchvision classification model 'resnet_18'", "'resnet18'"),
    ),
    "unknown-timm-name-names-other-sources": (
        lambda _tmp: lambda: create_classifier(ClassifierSpec(name="resnet_18"), 4, "student"),
        ConfigError,
        ("unknown timm model 'resnet_18'", "torchvision/<name>", "hf-hub:"),
    ),
    "hub-id-not-in-cache": (
        lambda tmp: lambda: create_classifier(ClassifierSpec(name="hf-hub:someone/absent-net"), 4, "teacher"),
        ConfigError,
        ("someone/absent-net", "not in the local Hugging Face cache", "hf download", "models--someone--absent-net"),
    ),
    "class-path-module-missing": (
        lambda _tmp: lambda: create_classifier(ClassifierSpec(model_class="no_such_pkg.nets.MyNet"), 4, "student"),
        ConfigError,
        ("student.model_class 'no_such_pkg.nets.MyNet'", "cannot import module 'no_such_pkg.nets'"),
    ),
    "class-path-class-missing": (
        lambda _tmp: lambda: create_classifier(ClassifierSpec(model_class="torch.nn.NoSuchNet"), 4, "student"),
        ConfigError,
        ("module 'torch.nn' has no 'NoSuchNet'",),
    ),
    "head-mismatch-without-reinit": (
        lambda tmp: (
            lambda: create_classifier(
                ClassifierSpec(name="test_resnet", checkpoint=_imagenet_like_file(tmp)), 4, "student"
            )
        ),
        CheckpointError,
        ("fc.weight: checkpoint (10, 96) vs model (4, 96)", "10 classes", "student.head: reinit"),
    ),
    "head-value-unknown": (
        lambda _tmp: lambda: create_classifier(ClassifierSpec(name="test_resnet", head="drop"), 4, "student"),
        ConfigError,
        ("student.head must be 'keep' or 'reinit'", "'drop'"),
    ),
    "callback-class-map-student-index-out-of-range": (
        lambda _tmp: _kd_with_class_map([0, 1, 2, 5]),
        ConfigError,
        ("kd.class_map", "student class index 5 is out of range", "3 classes"),
    ),
    "spec-class-map-teacher-index-out-of-range": (
        lambda _tmp: (
            lambda: ClassificationTask(
                student="test_resnet",
                teacher={"name": "test_resnet", "num_classes": 4, "class_map": {0: 0, 1: 1, 7: 1}},
                num_classes=2,
            )
        ),
        ConfigError,
        ("teacher.class_map", "teacher class index 7 is out of range", "4 classes"),
    ),
    "teacher-classes-differ-without-class-map": (
        lambda _tmp: (
            lambda: ClassificationTask(
                student="test_resnet", teacher={"name": "test_resnet", "num_classes": 10}, num_classes=4
            )
        ),
        ConfigError,
        ("teacher is configured for 10 classes but the task has 4", "teacher.class_map"),
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_model_choice_is_refused(case: str, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty cache, whatever this machine has
    make, error_type, names = CASES[case]
    expect_user_error(make(tmp_path), *names, error_type=error_type)


def test_unknown_torchvision_student_on_the_command_line(tmp_path: Path, capsys):
    argv = [
        "fit",
        "--config",
        str(CONFIG),
        "--model.init_args.student={name: torchvision/mobilenet_v3_smal}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        f"--data.init_args.data_dir={tmp_path / 'data'}",
    ]
    expect_cli_error(argv, capsys, "mobilenet_v3_smal", "mobilenet_v3_small")
    assert not (tmp_path / "runs").exists()
