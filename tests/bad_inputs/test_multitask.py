"""Bad inputs of the multi-task student (docs/multitask.md): each refused with the culprit and the fix named."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl

from visiondistill.core.errors import ConfigError
from visiondistill.core.teachers import head_output
from visiondistill.distill import LogitDistillation, PixelwiseDistillation

from ..support.bad_inputs import expect_user_error
from ..support.multitask import CLS_TEACHER, SEG_TEACHER, multitask_loader, tiny_multitask


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        ({"teachers": [CLS_TEACHER | {"head": "depth"}]}, ("teachers.cls_t.head", "'depth'", "cls", "seg")),
        ({"teachers": [{k: v for k, v in SEG_TEACHER.items() if k != "head"}]}, ("teachers.seg_t.head", "None")),
        ({"teachers": [CLS_TEACHER, CLS_TEACHER | {"id": "other"}]}, ("teachers.other", "'cls'", "already")),
        ({"task_weights": {"depth": 1.0}}, ("task_weights", "'depth'", "cls", "seg")),
        ({"task_weights": {"seg": -1.0}}, ("task_weights.seg", ">= 0")),
        ({"teachers": [CLS_TEACHER | {"in_channels": 1}]}, ("teachers.cls_t", "1 input channels", "in_channels")),
        ({"num_seg_classes": 1}, ("num_seg_classes", ">= 2")),
    ],
    ids=["unknown-head", "teacher-without-head", "two-teachers-one-head", "weight-unknown-head", "negative-weight",
         "teacher-channels", "one-seg-class"],
)  # fmt: skip
def test_a_bad_multitask_config_is_refused(changes: dict, names: tuple):
    expect_user_error(lambda: tiny_multitask(**changes), *names, error_type=ConfigError)


@pytest.mark.parametrize(
    ("teachers", "callback", "names"),
    [
        # Every term names its teacher: with teachers of different tasks, "the first teacher" would be arbitrary.
        ([CLS_TEACHER, SEG_TEACHER], LogitDistillation(), ("LogitDistillation", "names no teacher", "cls_t -> cls")),
        # A head without a teacher: the term names a teacher the model does not have.
        ([CLS_TEACHER], PixelwiseDistillation(teacher="seg_t"), ("PixelwiseDistillation.teacher", "'seg_t'", "cls_t")),
    ],
    ids=["term-names-no-teacher", "head-has-no-teacher"],
)
def test_a_term_that_cannot_find_its_head_and_teacher_is_refused_at_setup(teachers, callback, names, trainer_kwargs):
    module = tiny_multitask(teachers=teachers)
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[callback], max_steps=1, limit_val_batches=0)
    expect_user_error(lambda: trainer.fit(module, multitask_loader()), *names, error_type=ConfigError)
    assert trainer.global_step == 0  # refused before any step


def test_a_teacher_whose_head_the_student_lacks_is_refused():
    module = tiny_multitask(teachers=[CLS_TEACHER])
    expect_user_error(
        lambda: head_output(module, "cls_t", {"seg": None}, "KD.teacher"), "'cls_t'", "'cls'", "['seg']",
        error_type=ConfigError,
    )  # fmt: skip


def test_data_with_other_classes_per_head_is_refused(trainer_kwargs):
    class FiveClasses(pl.LightningDataModule):
        head_classes = {"cls": list("abcde"), "seg": ["background", *"abc"]}
        in_channels = 3

        def train_dataloader(self):
            return multitask_loader()

    trainer = pl.Trainer(**trainer_kwargs, max_steps=1, limit_val_batches=0)
    fit = lambda: trainer.fit(tiny_multitask(teachers=None), datamodule=FiveClasses())  # noqa: E731
    expect_user_error(fit, "5 classes", "num_classes: 5", error_type=ConfigError)
