"""Bad inputs with several teachers (docs/teachers.md): each refused with the culprit and the fix named."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from visiondistill.core.errors import ConfigError
from visiondistill.distill import (
    AttentionTransfer,
    LogitDistillation,
    PixelwiseDistillation,
    TeacherOutputCache,
)
from visiondistill.explain import FeatureMapCallback, GradCAMCallback
from visiondistill.tasks import ClassificationTask

from ..conftest import quadrant_images
from ..support.bad_inputs import expect_user_error

A, B = {"id": "a", "name": "test_resnet"}, {"id": "b", "name": "test_resnet"}


def two_teachers(**changes) -> ClassificationTask:
    return ClassificationTask(student={"name": "test_resnet"}, num_classes=4, **({"teachers": [A, B]} | changes))


@pytest.mark.parametrize(
    "weight", [0, -1.0, float("inf"), float("nan"), "heavy"], ids=["zero", "negative", "inf", "nan", "text"]
)
def test_a_teacher_weight_that_is_not_positive_is_refused(weight):
    bad = [A, B | {"weight": weight}]
    expect_user_error(lambda: two_teachers(teachers=bad), "teachers[1]", "(b)", "weight", error_type=ConfigError)


@pytest.mark.parametrize(
    ("teachers", "names"),
    [
        ([], ("non-empty list",)),
        ({"id": "a", "name": "test_resnet"}, ("non-empty list",)),
        ([A, A], ("teachers[1].id", "'a'", "twice")),
        ([A, {"id": "b c", "name": "test_resnet"}], ("teachers[1].id", "'b c'")),
        ([A, "resnet18"], ("teachers[1]", "mapping")),
    ],
    ids=["empty", "not-a-list", "duplicate-id", "bad-id", "entry-not-a-mapping"],
)
def test_a_malformed_teacher_list_is_refused(teachers, names):
    expect_user_error(lambda: two_teachers(teachers=teachers), *names, error_type=ConfigError)


def test_teacher_and_teachers_together_are_refused():
    expect_user_error(
        lambda: two_teachers(teacher={"name": "test_resnet"}), "`teacher`", "`teachers`", error_type=ConfigError
    )


def test_teachers_with_other_class_counts_need_a_class_map():
    other = B | {"num_classes": 10}
    expect_user_error(
        lambda: two_teachers(teachers=[A, other]),
        "teachers.b",
        "10 classes",
        "teachers.b.class_map",
        error_type=ConfigError,
    )
    # With a class map onto the task's 4 classes the same teacher is accepted.
    task = two_teachers(teachers=[A, other | {"class_map": [0, 1, 2, 3, None, None, None, None, None, None]}])
    assert list(task.teachers) == ["a", "b"]


def _fit(task, callback, trainer_kwargs):
    trainer = pl.Trainer(**(trainer_kwargs | {"max_steps": 1}), callbacks=[callback])
    trainer.fit(task, DataLoader(quadrant_images(n=8), batch_size=8))


@pytest.mark.parametrize(
    "callback",
    [
        lambda: LogitDistillation(teacher="c"),
        lambda: PixelwiseDistillation(teacher="c"),
        lambda: AttentionTransfer(teacher="c"),
        lambda: FeatureMapCallback(teacher="c", log_images=False),
        lambda: GradCAMCallback(teacher="c", log_images=False),
    ],
    ids=["kd", "pixelwise", "attention-transfer", "feature-maps", "gradcam"],
)
def test_an_unknown_teacher_id_names_the_known_ones(callback, trainer_kwargs):
    callback = callback()
    fit = lambda: _fit(two_teachers(), callback, trainer_kwargs)  # noqa: E731
    expect_user_error(fit, "unknown teacher 'c'", "['a', 'b']", error_type=ConfigError)


def test_a_teacher_id_on_a_single_teacher_model_is_refused(trainer_kwargs):
    task = ClassificationTask(student={"name": "test_resnet"}, teacher={"name": "test_resnet"}, num_classes=4)
    expect_user_error(
        lambda: _fit(task, LogitDistillation(teacher="a"), trainer_kwargs),
        "LogitDistillation.teacher",
        "'a'",
        "single teacher",
        error_type=ConfigError,
    )


def test_the_teacher_cache_refuses_several_teachers(trainer_kwargs):
    expect_user_error(
        lambda: _fit(two_teachers(), TeacherOutputCache(), trainer_kwargs),
        "TeacherOutputCache",
        "2 teachers",
        "['a', 'b']",
        error_type=ConfigError,
    )
