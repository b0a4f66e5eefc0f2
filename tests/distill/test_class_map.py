"""A teacher trained on more or other classes than the student: class maps for the logit terms, on the callbacks and
on the teacher's spec."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import timm
import torch
from torch.utils.data import DataLoader

from visiondistill.core.class_map import ClassMap, map_logits
from visiondistill.core.errors import ConfigError
from visiondistill.distill import DecoupledDistillation, LogitDistillation, losses
from visiondistill.models import ClassifierSpec
from visiondistill.tasks import ClassificationTask

from ..conftest import quadrant_images
from .test_own_project import MyDistiller

#: Six teacher classes onto three student classes: {0, 1} -> 0, {2} -> 1, {4, 5} -> 2, teacher class 3 dropped.
TEACHER_TO_STUDENT = [0, 0, 1, None, 2, 2]
GROUPS = [[0, 1], [2], [4, 5]]


def _grouped(probabilities: torch.Tensor, groups=GROUPS) -> torch.Tensor:
    sums = torch.stack([probabilities[:, group].sum(1) for group in groups], dim=1)
    return sums / sums.sum(1, keepdim=True)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_mapped_probabilities_are_the_sums_of_the_teachers(temperature: float):
    teacher = torch.randn(5, 6, dtype=torch.float64) * 3
    mapped = map_logits(teacher, TEACHER_TO_STUDENT, temperature=temperature)
    expected = _grouped(torch.softmax(teacher / temperature, dim=1))
    torch.testing.assert_close(torch.softmax(mapped / temperature, dim=1), expected)
    # Nothing dropped: the plain sums, not renormalised.
    full = map_logits(teacher, [0, 0, 1, 1, 2, 2], temperature=temperature)
    plain = torch.softmax(teacher / temperature, dim=1)
    torch.testing.assert_close(
        torch.softmax(full / temperature, dim=1),
        torch.stack([plain[:, :2].sum(1), plain[:, 2:4].sum(1), plain[:, 4:].sum(1)], 1),
    )


def test_mapping_spelling_equals_list_spelling_and_keeps_spatial_dims():
    teacher = torch.randn(2, 6, 3, 3)
    as_list = map_logits(teacher, TEACHER_TO_STUDENT)
    as_mapping = map_logits(teacher, {0: 0, 1: 0, 2: 1, 4: 2, 5: 2})
    torch.testing.assert_close(as_list, as_mapping)
    assert as_list.shape == (2, 3, 3, 3)
    torch.testing.assert_close(as_list[:, 1], teacher[:, 2])


@pytest.mark.parametrize(
    ("class_map", "num_teacher", "num_student", "message"),
    [
        ([0, 1, 7], 3, 3, "student class index 7 is out of range: the student predicts 3 classes"),
        ({9: 0, 1: 1}, 6, 2, "teacher class index 9 is out of range: the teacher predicts 6 classes"),
        ([0, 1], 6, 2, "lists 2 teacher classes but the teacher predicts 6"),
        ([0, 0, None], 3, 2, r"student classes \[1\] receive no teacher class"),
        ([None, None], 2, 1, "keeps no teacher class"),
        ([0, -1], 2, 1, r"entry 1 must be a class index \(an integer >= 0\), got -1"),
        ("0,1", 2, 2, "must be a list"),
    ],
    ids=["student-index", "teacher-index", "length", "uncovered", "empty", "negative", "string"],
)
def test_class_map_checks_name_the_problem(class_map, num_teacher, num_student, message):
    with pytest.raises(ConfigError, match=message):
        ClassMap.parse(class_map, "kd.class_map").check(num_teacher, num_student, "kd.class_map")


def test_callback_terms_use_the_mapped_soft_targets():
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 3), torch.randn(4, 6)
    targets = torch.tensor([0, 1, 2, 0])
    kd = LogitDistillation(temperature=4.0, class_map=TEACHER_TO_STUDENT)
    target_logits = 4.0 * torch.log(_grouped(torch.softmax(teacher / 4.0, dim=1)))
    torch.testing.assert_close(
        kd.compute_loss(None, (None, targets), student, teacher), losses.kd_loss(student, target_logits, 4.0)
    )
    dkd = DecoupledDistillation(temperature=2.0, class_map=TEACHER_TO_STUDENT)
    target_logits = 2.0 * torch.log(_grouped(torch.softmax(teacher / 2.0, dim=1)))
    torch.testing.assert_close(
        dkd.compute_loss(None, (None, targets), student, teacher),
        losses.dkd_loss(student, target_logits, targets, alpha=1.0, beta=8.0, temperature=2.0),
    )
    with pytest.raises(ConfigError, match="kd.class_map lists 6 teacher classes but the teacher predicts 4"):
        kd.compute_loss(None, (None, targets), student, teacher[:, :4])
    with pytest.raises(ConfigError, match="LogitDistillation.class_map: entry 0 must be a class index"):
        LogitDistillation(class_map=["cat"])


def test_own_project_teacher_with_more_classes_trains_with_a_callback_class_map(trainer_kwargs):
    student, teacher = timm.create_model("test_resnet", num_classes=3), timm.create_model("test_resnet", num_classes=6)
    callbacks = [LogitDistillation(class_map=TEACHER_TO_STUDENT), DecoupledDistillation(class_map=TEACHER_TO_STUDENT)]
    trainer = pl.Trainer(callbacks=callbacks, **{**trainer_kwargs, "max_steps": 2})
    trainer.fit(MyDistiller(student, teacher), DataLoader(quadrant_images(n=8, num_classes=3), batch_size=4))
    assert torch.isfinite(trainer.callback_metrics["train/distill/kd"])
    assert torch.isfinite(trainer.callback_metrics["train/distill/dkd"])


def test_teacher_spec_class_map_gives_every_callback_the_tasks_classes(trainer_kwargs):
    torch.manual_seed(0)
    teacher = ClassifierSpec(name="test_efficientnet", num_classes=6, class_map=TEACHER_TO_STUDENT)
    task = ClassificationTask(student=ClassifierSpec(name="test_resnet"), teacher=teacher, num_classes=3)
    images = torch.randn(2, 3, 32, 32)
    mapped = task.teacher(images)
    assert mapped.shape == (2, 3)
    task.teacher._forward_hooks.clear()  # the raw six-class logits, to check the sums against
    raw = task.teacher(images)
    torch.testing.assert_close(torch.softmax(mapped, 1), _grouped(torch.softmax(raw, 1)))
    task = ClassificationTask(student=ClassifierSpec(name="test_resnet"), teacher=teacher, num_classes=3)
    trainer = pl.Trainer(callbacks=[LogitDistillation()], **{**trainer_kwargs, "max_steps": 2})
    trainer.fit(task, DataLoader(quadrant_images(n=8, num_classes=3), batch_size=4))
    assert torch.isfinite(trainer.callback_metrics["train/distill/kd"])
    with pytest.raises(ConfigError, match=r"teacher.class_map is a mapping, so set teacher.num_classes"):
        ClassificationTask(
            student="test_resnet", teacher={"name": "test_resnet", "class_map": {0: 0, 1: 1}}, num_classes=2
        )
    with pytest.raises(ConfigError, match=r"student.class_map: a class map maps a teacher's classes"):
        ClassificationTask(student={"name": "test_resnet", "class_map": [0, 1]}, num_classes=2)
