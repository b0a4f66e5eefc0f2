"""timm classifiers described by a small, config-friendly spec."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
from torch import nn

from visiondistill.core.config import spec_from
from visiondistill.models.checkpoints import CheckpointError, extract_state_dict, load_weights, read_checkpoint


@dataclass
class ClassifierSpec:
    """What network to build and where its weights come from.

    Attributes:
        name: A timm model name (``resnet18``, ``test_resnet``, ``mobilenetv3_small_050`` …). For a
            teacher it may be left out when ``checkpoint`` is one of our own runs: the name is then
            read from the checkpoint.
        num_classes: Output classes; ``None`` takes the task's ``num_classes``.
        in_channels: Input channels (1 for grayscale, e.g. medical images; 3 for RGB).
        pretrained: Load timm's pretrained weights. They must already be in the local cache:
            nothing is downloaded at run time.
        checkpoint: A local checkpoint to load: a ``.ckpt`` written by a visiondistill run (its
            ``student`` weights are used) or a plain state dict (``.pt``/``.pth``/``.safetensors``).
        kwargs: Extra keyword arguments for ``timm.create_model`` (``drop_rate``, ``drop_path_rate`` …).
    """

    name: str | None = None
    num_classes: int | None = None
    in_channels: int = 3
    pretrained: bool = False
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, value: ClassifierSpec | Mapping[str, Any] | str, role: str = "model") -> ClassifierSpec:
        """Accepts a spec, a mapping (as stored in checkpoints) or a bare model name.

        Raises:
            TypeError: On unknown keys, naming them and the valid ones.
        """
        if isinstance(value, str):
            return cls(name=value)
        return spec_from(cls, value, role, expected="a mapping or a model name")


def create_classifier(spec: ClassifierSpec, num_classes: int, role: str = "model") -> nn.Module:
    """Builds a timm classifier from a spec and loads its checkpoint, if any.

    Args:
        spec: The spec; its ``num_classes`` (when set) must equal ``num_classes``.
        num_classes: The task's number of classes.
        role: ``"teacher"``/``"student"`` for messages.

    Returns:
        The model.

    Raises:
        ValueError: When the class counts disagree or the model name is unknown.
        CheckpointError: When the checkpoint is missing, unreadable or does not fit.
    """
    if spec.num_classes is not None and spec.num_classes != num_classes:
        raise ValueError(
            f"{role} is configured for {spec.num_classes} classes but the task has {num_classes}; "
            f"set {role}.num_classes to {num_classes} or leave it out"
        )
    checkpoint = read_checkpoint(spec.checkpoint) if spec.checkpoint else None
    name = spec.name or _name_from_checkpoint(checkpoint, spec, role)
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:10]
        raise ValueError(f"{role}: unknown timm model {name!r}; similar names: {close or 'none'}")
    model = timm.create_model(
        name, pretrained=spec.pretrained, num_classes=num_classes, in_chans=spec.in_channels, **spec.kwargs
    )
    if checkpoint is not None:
        load_weights(model, extract_state_dict(checkpoint), source=str(spec.checkpoint), role=role)
    return model


def _name_from_checkpoint(checkpoint: Mapping[str, Any] | None, spec: ClassifierSpec, role: str) -> str:
    hparams = (checkpoint or {}).get("hyper_parameters") or {}
    stored = hparams.get("student")
    name = stored.get("name") if isinstance(stored, Mapping) else getattr(stored, "name", None)
    if not name:
        where = f" and checkpoint {Path(spec.checkpoint).name!r} does not record one" if spec.checkpoint else ""
        raise CheckpointError(f"{role}: no model name given{where}; set {role}.name (a timm model name)")
    return name
