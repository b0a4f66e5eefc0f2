"""DistillationTask: one declaration of a task (specs, optimiser arguments, checks), the CLI's view of it, and
configs and checkpoints written before the input-channel field was spelled ``in_channels`` everywhere."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from visiondistill.cli import VisionDistillCLI, main
from visiondistill.models import ClassifierSpec
from visiondistill.tasks import (
    ClassificationTask,
    DetectionTask,
    DistillationTask,
    KeypointTask,
    MultiTaskModule,
    SegmentationTask,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
TASKS = (ClassificationTask, SegmentationTask, DetectionTask, KeypointTask)
#: The arguments every task takes from `DistillationTask` (optimiser and speed settings), with their defaults.
OPTIMISER_DEFAULTS = {
    "optimizer": "adamw",
    "lr": 1e-3,
    "warmup_epochs": 1.0,
    "scheduler": "cosine",
    "channels_last": False,
    "compile": False,
    "teachers": None,
}

#: The smallest student of each task.
TINY = {
    ClassificationTask: {"name": "test_resnet"},
    SegmentationTask: {"arch": "Unet", "encoder_name": "tu-test_resnet"},
    DetectionTask: {"backbone": "test_resnet", "fpn_channels": 32},
    KeypointTask: {"backbone": "test_resnet", "deconv_channels": [8]},
}

#: Student specs exactly as `record_hyperparameters` of main (commit bdea35a) wrote them into checkpoints:
#: ClassifierSpec and KeypointModelSpec still spelled the input channels ``in_chans``.
OLD_CLASSIFIER_HPARAMS = {
    "name": "test_resnet",
    "num_classes": None,
    "in_chans": 1,
    "pretrained": False,
    "checkpoint": None,
    "kwargs": {},
}
OLD_KEYPOINT_HPARAMS = {
    "backbone": "test_resnet",
    "deconv_channels": [8],
    "stage": -1,
    "num_keypoints": None,
    "in_chans": 1,
    "pretrained": False,
    "checkpoint": None,
    "kwargs": {},
}


def own_arguments(task: type) -> set[str]:
    """The arguments a task declares itself (its signature without ``**kwargs``)."""
    parameters = inspect.signature(task.__init__).parameters.values()
    return {p.name for p in parameters if p.name != "self" and p.kind is not p.VAR_KEYWORD}


def printed_config(args: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


# -- the CLI sees every argument --------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(ROOT / "configs")) for c in CONFIGS])
def test_print_config_shows_every_argument_of_the_task(config: Path, capsys):
    written = yaml.safe_load(config.read_text())["model"]
    printed = printed_config(["--config", str(config)], capsys)["model"]
    assert printed["class_path"] == written["class_path"]
    task = next(t for t in (*TASKS, MultiTaskModule) if written["class_path"].endswith(t.__name__))
    arguments = printed["init_args"]
    expected = own_arguments(task) | set(OPTIMISER_DEFAULTS) | {"weight_decay"}
    assert expected <= set(arguments), f"missing from --print_config: {sorted(expected - set(arguments))}"
    for key, value in written["init_args"].items():  # the config's values, not the defaults
        if key not in ("student", "teacher"):
            assert arguments[key] == value, key
    for key, default in OPTIMISER_DEFAULTS.items():
        if key not in written["init_args"]:
            assert arguments[key] == default, key
    for role in ("student", "teacher"):
        if written["init_args"].get(role):  # the spec is shown whole, with the one spelling of its channels
            assert "in_channels" in arguments[role] and "in_chans" not in arguments[role]


@pytest.mark.parametrize("task", TASKS, ids=[t.__name__ for t in TASKS])
def test_cli_help_gives_the_optimiser_arguments_with_types_and_defaults(task: type, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model.help", f"visiondistill.tasks.{task.__name__}"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--model.optimizer {adamw,sgd}" in text
    assert "(type: Literal['adamw', 'sgd'], default: adamw)" in text
    weight_decay = "0.05" if task is ClassificationTask else "0.0001"
    assert f"(type: float, default: {weight_decay})" in text
    assert "(type: Literal['cosine', 'constant'], default: cosine)" in text
    for name in own_arguments(task):
        assert f"--model.{name} " in text, name


# -- the shared checks and the recorded hyper-parameters --------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS, ids=[t.__name__ for t in TASKS])
def test_teacher_and_student_must_take_the_same_input_channels(task: type):
    student = TINY[task]
    with pytest.raises(ValueError, match="teacher takes 1 input channels but the student takes 3.*same in_channels"):
        task(student=student, teacher={**student, "in_channels": 1}, **{task.outputs_arg: 3})


@pytest.mark.parametrize("task", TASKS, ids=[t.__name__ for t in TASKS])
def test_output_names_must_match_their_count(task: type):
    student = TINY[task]
    message = f"{task.names_arg} has 2 names but {task.outputs_arg} is 3"
    with pytest.raises(ValueError, match=message):
        task(student=student, **{task.outputs_arg: 3, task.names_arg: ["a", "b"]})


def test_unknown_arguments_and_bad_optimiser_settings_are_named():
    student = TINY[ClassificationTask]
    with pytest.raises(TypeError, match=r"ClassificationTask got unexpected arguments \['lrr'\]"):
        ClassificationTask(student=student, lrr=0.1)
    with pytest.raises(ValueError, match="optimizer must be 'adamw' or 'sgd', got 'adam'"):
        ClassificationTask(student=student, optimizer="adam")
    with pytest.raises(ValueError, match="lr must be > 0, got 0"):
        KeypointTask(student=TINY[KeypointTask], lr=0)


@pytest.mark.parametrize("task", TASKS, ids=[t.__name__ for t in TASKS])
def test_every_argument_is_recorded_and_restored_from_a_checkpoint(task: type, tmp_path: Path):
    student = TINY[task]
    module = task(student=student, **{task.outputs_arg: 3}, lr=3e-3, scheduler="constant")
    hparams = dict(module.hparams)
    assert set(hparams) == own_arguments(task) - {task.names_arg} | set(OPTIMISER_DEFAULTS) | {"weight_decay"}
    assert hparams["lr"] == 3e-3 and hparams["scheduler"] == "constant" and hparams["optimizer"] == "adamw"
    assert hparams["weight_decay"] == (0.05 if task is ClassificationTask else 1e-4)
    assert hparams["student"]["in_channels"] == 3 and "in_chans" not in hparams["student"]
    path = tmp_path / "task.ckpt"
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": "2.6"}, path
    )
    restored = task.load_from_checkpoint(path)
    assert (restored.lr, restored.weight_decay, restored.scheduler_name) == (3e-3, hparams["weight_decay"], "constant")
    assert restored.student_spec == module.student_spec


def test_a_task_declares_its_networks_with_class_attributes():
    for task in TASKS:
        assert issubclass(task, DistillationTask)
        assert task.spec_class is not None and callable(task.model_factory)
        assert {"optimizer", "lr", "warmup_epochs", "scheduler"}.isdisjoint(own_arguments(task))


# -- configs and checkpoints written before the rename ----------------------------------------------------------------


def test_an_old_config_spelling_in_chans_still_loads(tmp_path: Path):
    data = yaml.safe_load((ROOT / "configs/classification/shapes_student_scratch.yaml").read_text())
    data["model"]["init_args"]["student"] = {"name": "test_resnet", "in_chans": 1}  # as main wrote configs
    config = tmp_path / "old.yaml"
    config.write_text(yaml.safe_dump(data))
    with pytest.warns(FutureWarning, match=r"'in_chans' is deprecated, write 'in_channels: 1'"):
        cli = VisionDistillCLI(args=["--config", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert cli.model.student_spec.in_channels == 1
    assert next(cli.model.student.parameters()).shape[1] == 1  # the stem's convolution takes one channel
    assert cli.model.hparams["student"]["in_channels"] == 1 and "in_chans" not in cli.model.hparams["student"]


def old_checkpoint(task: DistillationTask, old_student: dict, path: Path, trainer_kwargs: dict, loader) -> Path:
    """Trains ``task`` one step and saves it with the student spec as the current main recorded it."""
    trainer = pl.Trainer(**trainer_kwargs, max_steps=1)
    trainer.fit(task, loader)
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["hyper_parameters"]["student"] = dict(old_student)
    torch.save(checkpoint, path)
    return path


@pytest.fixture
def old_classifier_checkpoint(tmp_path: Path, trainer_kwargs) -> Path:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 1, 32, 32), torch.arange(8) % 2)
    task = ClassificationTask(student=ClassifierSpec(name="test_resnet", in_channels=1), num_classes=2)
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    return old_checkpoint(task, OLD_CLASSIFIER_HPARAMS, tmp_path / "old.ckpt", trainer_kwargs, loader)


def test_an_old_checkpoint_loads_through_load_from_checkpoint(old_classifier_checkpoint: Path):
    stored = torch.load(old_classifier_checkpoint, weights_only=False)
    assert stored["hyper_parameters"]["student"]["in_chans"] == 1
    with pytest.warns(FutureWarning, match="'in_chans' is deprecated"):
        task = ClassificationTask.load_from_checkpoint(old_classifier_checkpoint)
    assert task.student_spec.in_channels == 1 and task.hparams["student"]["in_channels"] == 1
    for key, value in task.student.state_dict().items():
        assert torch.equal(value, stored["state_dict"][f"student.{key}"]), key


def test_an_old_checkpoint_is_a_teacher_in_python_and_in_a_config(old_classifier_checkpoint: Path, tmp_path: Path):
    stored = torch.load(old_classifier_checkpoint, weights_only=False)["state_dict"]
    with pytest.warns(FutureWarning, match="teacher spec: 'in_chans' is deprecated"):
        task = ClassificationTask(
            student={"name": "test_resnet", "in_channels": 1},
            teacher={"checkpoint": str(old_classifier_checkpoint), "in_chans": 1},
            num_classes=2,
        )
    for key, value in task.teacher.state_dict().items():
        assert torch.equal(value, stored[f"student.{key}"]), key
    data = yaml.safe_load((ROOT / "configs/classification/shapes_kd.yaml").read_text())
    data["model"]["init_args"].update(
        student={"name": "test_resnet", "in_channels": 1},
        teacher={"checkpoint": str(old_classifier_checkpoint), "in_channels": 1},
        num_classes=2,
    )
    config = tmp_path / "student.yaml"
    config.write_text(yaml.safe_dump(data))
    cli = VisionDistillCLI(args=["--config", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert type(cli.model.teacher).__name__ == "ResNet"  # the name came from the old checkpoint
    for key, value in cli.model.teacher.state_dict().items():
        assert torch.equal(value, stored[f"student.{key}"]), key


def test_an_old_keypoint_checkpoint_loads_as_teacher_and_task(tmp_path: Path, trainer_kwargs):
    torch.manual_seed(0)
    student = {"backbone": "test_resnet", "deconv_channels": [8], "in_channels": 1}
    task = KeypointTask(student=student, num_keypoints=2, flip_test=False)
    path = tmp_path / "old.ckpt"
    checkpoint = {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}
    checkpoint["hyper_parameters"]["student"] = dict(OLD_KEYPOINT_HPARAMS)
    checkpoint["pytorch-lightning_version"] = pl.__version__
    torch.save(checkpoint, path)
    with pytest.warns(FutureWarning, match="'in_chans' is deprecated"):  # the backbone is read from the checkpoint
        distilled = KeypointTask(
            student=student, teacher={"checkpoint": str(path), "in_channels": 1}, num_keypoints=2, flip_test=False
        )
    for key, value in distilled.teacher.state_dict().items():
        assert torch.equal(value, task.student.state_dict()[key]), key
    with pytest.warns(FutureWarning, match="'in_chans' is deprecated"):
        restored = KeypointTask.load_from_checkpoint(path)
    assert restored.student_spec.in_channels == 1 and restored.stride == task.stride
    for key, value in restored.student.state_dict().items():
        assert torch.equal(value, task.student.state_dict()[key]), key
