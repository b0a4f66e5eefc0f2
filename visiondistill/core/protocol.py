"""The small protocol a LightningModule follows to be distilled, and helpers that read it.

A module is distillable when it has ``student: nn.Module`` and ``teacher: nn.Module | None``
attributes and, in ``training_step``, adds ``distillation_loss(self, batch, student_out, teacher_out)``
to its task loss. Everything else (freezing the teacher, learnable connectors) the callbacks do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import default_collate

from visiondistill.core.errors import VisionDistillError


class ProtocolError(VisionDistillError, TypeError):
    """A LightningModule that lacks what the distillation protocol needs."""


def get_student(pl_module: pl.LightningModule) -> nn.Module:
    """Returns ``pl_module.student`` or raises a `ProtocolError` that explains the protocol."""
    student = getattr(pl_module, "student", None)
    if not isinstance(student, nn.Module):
        raise ProtocolError(
            f"{type(pl_module).__name__} has no `student` module; distillation callbacks need a LightningModule "
            "with `student: nn.Module` and `teacher: nn.Module` attributes (see visiondistill.distill)"
        )
    return student


def get_teacher(pl_module: pl.LightningModule, *, required: bool, who: str = "this callback") -> nn.Module | None:
    """Returns ``pl_module.teacher``; raises a `ProtocolError` when it is missing and ``required``."""
    teacher = getattr(pl_module, "teacher", None)
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise ProtocolError(f"{type(pl_module).__name__}.teacher is a {type(teacher).__name__}, not an nn.Module")
    if teacher is None and required:
        raise ProtocolError(
            f"{who} needs a teacher, but {type(pl_module).__name__}.teacher is None: give the model a teacher "
            "(e.g. `model.init_args.teacher: {name: resnet18, checkpoint: runs/.../last.ckpt}`) or remove the callback"
        )
    return teacher


def freeze_teacher(teacher: nn.Module | None) -> None:
    """Freezes a teacher: no gradients for its parameters and eval mode for every submodule.

    Idempotent and cheap, so callbacks call it at every train batch: Lightning puts the whole
    LightningModule back into train mode after each validation loop, which would otherwise let the
    teacher's BatchNorm statistics drift.
    """
    if teacher is None:
        return
    for parameter in teacher.parameters():
        if parameter.requires_grad:
            parameter.requires_grad_(False)
    if teacher.training or any(module.training for module in teacher.modules()):
        teacher.eval()


def batch_inputs(batch: object) -> Tensor:
    """The input images of a batch: a tensor, the first item of a tuple/list, or ``batch["image"]``."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, Mapping):
        for key in ("image", "images", "input", "x"):
            if isinstance(batch.get(key), Tensor):
                return batch[key]
    raise ProtocolError(
        f"cannot find the input images in a batch of type {type(batch).__name__}; batches must be a tensor, "
        "a tuple (images, targets, ...) or a dict with an 'image' key"
    )


def batch_targets(batch: object) -> Tensor:
    """The class targets of a batch: the second item of a tuple/list, or ``batch["target"|"label"]``."""
    if isinstance(batch, list | tuple) and len(batch) > 1 and isinstance(batch[1], Tensor):
        return batch[1]
    if isinstance(batch, Mapping):
        for key in ("target", "label", "labels", "y"):
            if isinstance(batch.get(key), Tensor):
                return batch[key]
    raise ProtocolError(
        f"cannot find class targets in a batch of type {type(batch).__name__}; expected (images, targets) "
        "or a dict with a 'target' key"
    )


#: Keys of a training batch that interleaves labeled and unlabeled images (docs/unlabeled.md).
LABELED, UNLABELED = "labeled", "unlabeled"


@dataclass(frozen=True)
class TrainingBatch:
    """What a training step needs from a batch, with or without unlabeled images (`split_training_batch`).

    Attributes:
        inputs: Every image of the step (labeled first, then unlabeled): the networks run once on these.
        labeled: The labeled batch, as the dataloader gave it: what the task loss reads.
        distill: The batch the distillation terms read: the batch itself without unlabeled images; else a dict
            ``{"image": inputs, "labeled": mask, "labeled_batch": labeled}`` (``mask`` is ``True`` on the labeled
            rows), which holds no targets, so target-dependent terms fall back to their label-free form.
        num_labeled: The labeled rows (the first ``num_labeled`` of ``inputs``), or ``None`` when all are labeled.
    """

    inputs: Tensor
    labeled: Any
    distill: Any
    num_labeled: int | None = None


def split_training_batch(batch: object) -> TrainingBatch:
    """Reads a training batch: a plain batch, or ``{"labeled": batch, "unlabeled": images}``.

    The second form is what a datamodule with unlabeled images yields (e.g. Lightning's ``CombinedLoader`` over a
    dict of two loaders); the unlabeled part may be a tensor, a tuple whose first item is the images, or a dict
    with an ``image`` key, as `batch_inputs` reads. Labeled and unlabeled images are concatenated, so student and
    teacher run once per step on both; under BatchNorm the statistics are those of the whole step.

    Raises:
        ProtocolError: When the images cannot be found, or the two parts differ in image shape.

    Example::

        >>> step = split_training_batch({"labeled": (torch.zeros(2, 3, 8, 8), torch.zeros(2)),
        ...                              "unlabeled": torch.ones(5, 3, 8, 8)})
        >>> step.inputs.shape[0], step.num_labeled, step.distill["labeled"].tolist()
        (7, 2, [True, True, False, False, False, False, False])
    """
    if not (isinstance(batch, Mapping) and LABELED in batch and UNLABELED in batch):
        return TrainingBatch(inputs=batch_inputs(batch), labeled=batch, distill=batch)
    labeled, unlabeled = batch[LABELED], batch[UNLABELED]
    images = batch_inputs(labeled)
    if unlabeled is None:
        return TrainingBatch(inputs=images, labeled=labeled, distill=labeled)
    extra = batch_inputs(unlabeled)
    if extra.shape[1:] != images.shape[1:]:
        raise ProtocolError(
            f"labeled images of shape {tuple(images.shape[1:])} but unlabeled images of shape "
            f"{tuple(extra.shape[1:])}; read both with the same transform (image size and channels)"
        )
    inputs = torch.cat([images, extra.to(device=images.device, dtype=images.dtype)])
    mask = torch.zeros(inputs.shape[0], dtype=torch.bool, device=inputs.device)
    mask[: images.shape[0]] = True
    distill = {"image": inputs, LABELED: mask, "labeled_batch": labeled}
    return TrainingBatch(inputs=inputs, labeled=labeled, distill=distill, num_labeled=images.shape[0])


def labeled_mask(batch: object) -> Tensor | None:
    """The boolean mask of labeled rows of a distillation batch (`split_training_batch`), or ``None`` (all labeled)."""
    if isinstance(batch, Mapping) and isinstance(batch.get(LABELED), Tensor) and batch[LABELED].dtype == torch.bool:
        return batch[LABELED]
    return None


def targets_or(batch: object, fallback: Tensor) -> Tensor:
    """Class targets for every row: the batch's own, and ``fallback``'s on unlabeled rows.

    For terms that need a class per image (decoupled KD): on a batch with unlabeled images, labeled rows keep
    their targets and the others take ``fallback`` (e.g. the teacher's predictions).
    """
    mask = labeled_mask(batch)
    if mask is None:
        return batch_targets(batch)
    targets = fallback.detach().clone()
    targets[mask] = batch_targets(batch["labeled_batch"]).to(targets)
    return targets


def take_rows(value: Any, count: int | None) -> Any:
    """The first ``count`` rows of every tensor in ``value`` (a tensor, dict, list or tuple); ``value`` for ``None``.

    Raises:
        ProtocolError: For an output of another type (such outputs cannot be split into labeled and unlabeled rows).
    """
    if count is None:
        return value
    if isinstance(value, Tensor):
        return value[:count]
    if isinstance(value, Mapping):
        return {key: take_rows(item, count) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(take_rows(item, count) for item in value)
    raise ProtocolError(
        f"cannot take the labeled rows of a model output of type {type(value).__name__}; unlabeled images need "
        "outputs that are tensors (or dicts, lists, tuples of them) with one row per image"
    )


def output_logits(output: object) -> Tensor:
    """The logits of a model output: the tensor itself or ``output["logits"]``."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    if isinstance(output, list | tuple) and output and isinstance(output[0], Tensor):
        return output[0]
    raise ProtocolError(f"cannot find logits in a model output of type {type(output).__name__}")


def example_inputs(trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str | None = None) -> Tensor:
    """One small input batch for dry forwards in ``setup``.

    Taken from ``pl_module.example_input_array`` when set, else from the first sample of the
    datamodule's (or the trainer's) dataloader for the running stage.

    Raises:
        ProtocolError: When no input can be found.
    """
    example = getattr(pl_module, "example_input_array", None)
    if isinstance(example, Tensor):
        return example
    for loader in _candidate_loaders(trainer, stage):
        dataset = getattr(loader, "dataset", None)
        try:
            if dataset is not None and len(dataset) > 0:
                return batch_inputs(default_collate([dataset[0]]))
        except TypeError:  # iterable datasets have no len / indexing
            return batch_inputs(next(iter(loader)))
    raise ProtocolError(
        f"cannot size distillation connectors: {type(pl_module).__name__} has no `example_input_array` and no "
        "dataloader was found at setup; set `self.example_input_array = torch.zeros(1, C, H, W)` in the module"
    )


def _candidate_loaders(trainer: pl.Trainer, stage: str | None) -> list[DataLoader]:
    order = {
        "fit": ("train_dataloader", "val_dataloader"),
        "validate": ("val_dataloader",),
        "test": ("test_dataloader",),
        "predict": ("predict_dataloader",),
    }.get(stage or "fit", ("train_dataloader",))
    loaders: list[DataLoader] = []
    datamodule = getattr(trainer, "datamodule", None)
    for name in order:
        if datamodule is not None and hasattr(datamodule, name):
            try:
                loaders.append(getattr(datamodule, name)())
            except (NotImplementedError, RuntimeError, AttributeError):
                continue
    if not loaders:
        # Dataloaders handed straight to `trainer.fit(model, loader)` live on the loop's data source.
        loop = {"fit": trainer.fit_loop, "validate": trainer.validate_loop, "test": trainer.test_loop}.get(
            stage or "fit", trainer.fit_loop
        )
        source = getattr(loop, "_data_source", None)
        instance = getattr(source, "instance", None)
        if isinstance(instance, DataLoader):
            loaders.append(instance)
        elif isinstance(instance, list | tuple):
            loaders.extend(item for item in instance if isinstance(item, DataLoader))
    return [loader for loader in loaders if isinstance(loader, DataLoader)]


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU when it has none)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")
