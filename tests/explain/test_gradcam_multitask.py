"""GradCAMCallback on a multi-task student: one head explained, with its adapter, against that head's teacher."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from visiondistill.core.errors import ConfigError
from visiondistill.explain import GradCAMCallback
from visiondistill.models import ClassifierSpec
from visiondistill.tasks import ClassificationTask

from ..support.bad_inputs import expect_user_error
from ..support.multitask import SquaresWithClass, multitask_loader, tiny_multitask


def _probe(tmp_path, trainer_kwargs: dict, **options) -> tuple[dict, object]:
    """Validates a tiny multi-task module once with a GradCAMCallback; returns its maps.npz and the module."""
    module = tiny_multitask()
    callback = GradCAMCallback(num_samples=4, save_dir=tmp_path / "cams", log_images=False, **options)
    pl.Trainer(**trainer_kwargs, callbacks=[callback]).validate(module, multitask_loader(), verbose=False)
    return dict(np.load(tmp_path / "cams" / "epoch_000" / "maps.npz")), module


@pytest.mark.parametrize(
    ("head", "teacher_id", "classes"),
    [("cls", "cls_t", ["0", "1", "2"]), ("seg", "seg_t", ["0", "1", "2", "3"])],
    ids=["class-head", "mask-head"],
)
def test_explains_the_named_head_against_its_teacher(tmp_path, trainer_kwargs, head, teacher_id, classes):
    data, module = _probe(tmp_path, trainer_kwargs, head=head, target="ground_truth")
    dataset = SquaresWithClass()
    indices = torch.from_numpy(data["indices"]).long()
    images, labels = dataset.images[indices], dataset.labels[indices]
    # The head's own targets were read: the image's class for `cls`, the mask's dominant class (label + 1) for `seg`.
    expected = labels if head == "cls" else labels + 1
    assert data["explained"].tolist() == expected.tolist()
    assert data["class_names"].tolist() == classes
    # The teacher compared with is that head's teacher, and the student's prediction is that head's.
    with torch.no_grad():
        teacher_out = module.teachers[teacher_id].eval()(images)
        student_out = module.student.eval()(images)[head]
    if head == "cls":
        assert data["teacher_pred"].tolist() == teacher_out.argmax(1).tolist()
        assert data["student_pred"].tolist() == student_out.argmax(1).tolist()
    assert data["student_maps"].shape == data["teacher_maps"].shape == (4, 32, 32)
    assert np.isfinite(data["pearson"]).all() and "pointing_game_student" in data


def test_a_head_without_teacher_is_explained_alone(tmp_path, trainer_kwargs):
    module = tiny_multitask(teachers=[{"id": "cls_t", "head": "cls", "name": "test_resnet"}])
    callback = GradCAMCallback(num_samples=4, save_dir=tmp_path / "cams", log_images=False, head="seg")
    pl.Trainer(**trainer_kwargs, callbacks=[callback]).validate(module, multitask_loader(), verbose=False)
    data = np.load(tmp_path / "cams" / "epoch_000" / "maps.npz")
    assert "student_maps" in data and "teacher_maps" not in data


def _validate(module, callback, trainer_kwargs: dict) -> None:
    pl.Trainer(**trainer_kwargs, callbacks=[callback]).validate(module, multitask_loader(), verbose=False)


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({}, ("several heads", "cls, seg", "head:")),
        ({"head": "boxes"}, ("unknown head 'boxes'", "cls, seg")),
        ({"head": "seg", "teacher": "cls_t"}, ("'cls_t' does not teach head 'seg'", "cls_t -> cls", "seg_t -> seg")),
    ],
    ids=["no-head", "unknown-head", "teacher-of-another-head"],
)
def test_a_multitask_module_needs_a_known_head(trainer_kwargs, options, names):
    callback = GradCAMCallback(num_samples=2, log_images=False, **options)
    expect_user_error(lambda: _validate(tiny_multitask(), callback, trainer_kwargs), *names, error_type=ConfigError)


def test_a_single_output_module_refuses_a_head(trainer_kwargs):
    task = ClassificationTask(student=ClassifierSpec(name="test_resnet"), num_classes=3)
    callback = GradCAMCallback(num_samples=2, log_images=False, head="cls")
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])), batch_size=4
    )
    expect_user_error(
        lambda: pl.Trainer(**trainer_kwargs, callbacks=[callback]).validate(task, loader, verbose=False),
        "head='cls'",
        "single output",
        error_type=ConfigError,
    )
