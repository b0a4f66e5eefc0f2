"""The one way back from a checkpoint to a trained model: the task module its run recorded, rebuilt from its class path.

A visiondistill checkpoint names the class of the task module that wrote it (``hyper_parameters["_class_path"]``,
recorded by LightningCLI and by `visiondistill.tasks.DistillationTask` itself); `load_task_module` imports that class
and calls Lightning's ``load_from_checkpoint`` with the teacher left out, so the report, ``visiondistill export`` and
any evaluation get the same network the run trained, with the task's own metrics, decoding and post-processing. The
trained network alone is ``load_task_module(path).student``.

Teachers named by a model spec's ``checkpoint:`` are not rebuilt here: a spec builds the network and reads only the
``student.`` weights of that checkpoint (`visiondistill.models.checkpoints.extract_state_dict`), since the models
layer stands below the task modules.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from visiondistill.models.checkpoints import CheckpointError, read_checkpoint

__all__ = ["load_task_module", "recorded_class_path"]

#: Checkpoints written before the task modules recorded their class (runs started from Python, not LightningCLI):
#: the task is read from a key only its student spec (or hyper-parameters) has, most specific first.
_LEGACY_TASKS = (
    ("student", "fpn_channels", "visiondistill.tasks.DetectionTask"),
    ("hparams", "num_keypoints", "visiondistill.tasks.KeypointTask"),
    ("student", "arch", "visiondistill.tasks.SegmentationTask"),
    ("student", "name", "visiondistill.tasks.ClassificationTask"),
)

#: Where a student spec may fetch weights of its own; cleared, since the weights come from the checkpoint.
_NO_OWN_WEIGHTS = {"checkpoint": None, "pretrained": False, "encoder_weights": None}


def recorded_class_path(checkpoint: Mapping[str, Any], source: str | Path = "checkpoint") -> str:
    """The import path of the task module that wrote a loaded checkpoint.

    Args:
        checkpoint: The loaded checkpoint (`visiondistill.models.checkpoints.read_checkpoint`).
        source: Its file, named in messages.

    Returns:
        ``hyper_parameters["_class_path"]``, or for older checkpoints without it the built-in task whose student spec
        the hyper-parameters hold.

    Raises:
        CheckpointError: When the checkpoint holds no visiondistill student spec, or its task cannot be told.
    """
    hparams = checkpoint.get("hyper_parameters")
    student = hparams.get("student") if isinstance(hparams, Mapping) else None
    if not isinstance(student, Mapping):
        raise CheckpointError(
            f"{str(source)!r} is not a visiondistill student checkpoint (it has no hyper_parameters with a student "
            "spec); pass a .ckpt written by `visiondistill fit` (e.g. runs/<task>/<run>/checkpoints/best.ckpt)"
        )
    if hparams.get("_class_path"):
        return str(hparams["_class_path"])
    for where, key, class_path in _LEGACY_TASKS:
        if key in (student if where == "student" else hparams):
            return class_path
    raise CheckpointError(
        f"{str(source)!r} does not record its task module class (hyper_parameters['_class_path']); add it, e.g. "
        "checkpoint['hyper_parameters']['_class_path'] = 'visiondistill.tasks.ClassificationTask', and save again"
    )


def import_task_class(class_path: str, source: str | Path = "checkpoint") -> type:
    """The class named by an import path (``package.module.Class``).

    Raises:
        CheckpointError: When the module or the class cannot be imported.
    """
    module_path, _, class_name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_path), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise CheckpointError(
            f"{str(source)!r} was written by the task module {class_path!r}, which cannot be imported here ({error}); "
            "install the package that defines it"
        ) from error


def load_task_module(checkpoint_path: str | Path, task_class: type | None = None) -> Any:
    """Rebuilds the trained task module of a visiondistill checkpoint, without its teacher (eval mode, CPU).

    Args:
        checkpoint_path: A ``.ckpt`` written by a run of a visiondistill task module (`visiondistill fit` or a
            ``Trainer`` in Python).
        task_class: The task module class; default: the one the checkpoint records (`recorded_class_path`).

    Returns:
        The task module; its trained network is ``.student``, the run's settings ``.hparams``.

    Raises:
        CheckpointError: When the file is missing or unreadable, is not a visiondistill checkpoint, or its task
            module cannot be imported.
    """
    path = Path(checkpoint_path).expanduser()
    checkpoint = read_checkpoint(path)
    if task_class is None:
        task_class = import_task_class(recorded_class_path(checkpoint, path), path)
    student = dict(checkpoint["hyper_parameters"]["student"])
    student |= {key: value for key, value in _NO_OWN_WEIGHTS.items() if key in student}
    # LightningCLI's bookkeeping (`_class_path`, `_instantiator`) is no argument of the module; Lightning's
    # checkpoint migration needs a version key that checkpoints saved by hand (torch.save) lack. The patched
    # contents are handed to `load_from_checkpoint` in memory.
    checkpoint["hyper_parameters"] = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    checkpoint.setdefault("pytorch-lightning_version", "2.0.0")
    checkpoint.setdefault("state_dict", {})
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    # Several teachers (`teachers:`) are left out as the one teacher is; only modules that take them get the key.
    no_teachers = {"teachers": None} if checkpoint["hyper_parameters"].get("teachers") is not None else {}
    module = task_class.load_from_checkpoint(buffer, map_location="cpu", teacher=None, student=student, **no_teachers)
    return module.eval().cpu()


def run_data_settings(path: Path, checkpoint: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """The datamodule arguments a checkpoint was trained with, and where they were read.

    Lightning records a datamodule's ``save_hyperparameters`` in the checkpoint; a checkpoint without them (a
    datamodule that records none, or an older run) falls back to the run's ``config.yaml`` next to it.

    Args:
        path: The checkpoint file (``runs/<run>/checkpoints/best.ckpt``).
        checkpoint: Its loaded contents.

    Returns:
        The arguments (empty when neither source has them) and their source: ``"the checkpoint"``, the config file's
        path, or ``""``.
    """
    recorded = checkpoint.get("datamodule_hyper_parameters")
    if isinstance(recorded, Mapping) and recorded:
        return recorded, "the checkpoint"
    for folder in (path.parent, path.parent.parent):  # runs/<run>/checkpoints/best.ckpt → runs/<run>/config.yaml
        config = folder / "config.yaml"
        if config.is_file():
            import yaml

            try:
                data = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("data") or {}
            except (yaml.YAMLError, OSError, UnicodeDecodeError, AttributeError):
                continue
            arguments = data.get("init_args", data) if isinstance(data, Mapping) else None
            if isinstance(arguments, Mapping):
                return arguments, str(config)
    return {}, ""
