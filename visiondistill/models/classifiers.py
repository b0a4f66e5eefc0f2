"""Classifiers described by a small, config-friendly spec: timm, torchvision, hub ids or any ``nn.Module``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from visiondistill.core.class_map import ClassMap, map_logits
from visiondistill.core.config import spec_from
from visiondistill.core.errors import ConfigError
from visiondistill.models.checkpoints import (
    CheckpointError,
    classifier_prefix,
    extract_state_dict,
    load_weights,
    read_checkpoint,
)
from visiondistill.models.sources import build_from_model_class, build_network, split_source


@dataclass
class ClassifierSpec:
    """What network to build and where its weights come from (see `visiondistill.models.sources`).

    Attributes:
        name: The model's name in its source: a timm name (``resnet18``, ``test_resnet`` …), a torchvision name with
            the ``torchvision/`` prefix (``torchvision/mobilenet_v3_small``) or a timm model on the Hugging Face hub
            (``hf-hub:timm/resnet18.a1_in1k``, read from the local cache only). For a teacher it may be left out
            when ``checkpoint`` is one of our own runs: the model is then read from the checkpoint.
        num_classes: Output classes; ``None`` takes the task's ``num_classes``. With ``class_map`` (a teacher
            trained on other classes), the teacher's own class count.
        in_channels: Input channels (1 for grayscale, e.g. medical images; 3 for RGB).
        pretrained: Load the source's pretrained weights, from the local cache only (nothing is downloaded):
            timm names and hub ids from the Hugging Face cache, torchvision names from torch's hub cache. The
            classifier is re-initialised when the weights were made for another number of classes.
        checkpoint: A local checkpoint to load: a ``.ckpt`` written by a visiondistill run (its ``student``
            weights are used) or a plain state dict (``.pt``/``.pth``/``.safetensors``). Loaded strictly unless
            ``head`` is ``reinit``.
        kwargs: Extra keyword arguments of the named source's constructor (``timm.create_model``: ``drop_rate``,
            ``drop_path_rate`` …; ``torchvision.models.get_model``: ``dropout`` …).
        source: ``timm``, ``torchvision`` or ``hf-hub``: an alternative to the name prefixes; ``None`` reads the
            prefix (no prefix: timm).
        model_class: Any ``nn.Module`` by import path (``my_package.models.MyNet``) instead of ``name``; it gets
            ``model_args``, plus ``num_classes`` and ``in_channels`` (or ``in_chans``) when its constructor takes
            them and ``model_args`` does not set them.
        model_args: Keyword arguments of ``model_class``.
        head: ``keep`` (default): ``checkpoint`` must fit exactly. ``reinit``: load everything but the classifier
            (timm's ``get_classifier()``, else the last ``nn.Linear``), which keeps its fresh initialisation for
            the task's classes; the skipped keys are listed in a warning. For a 1000-class ImageNet ``.pth`` as the
            starting point of a 6-class model.
        class_map: Teacher only: maps the teacher's classes onto the task's, for a teacher trained on more or other
            classes (see `visiondistill.core.class_map`): a list with one student class index (or ``null``,
            dropped) per teacher class, or a mapping ``{teacher class: student class}``. The teacher's logits are
            then aggregated per task class (``logsumexp``: its probabilities summed), so every callback and
            explanation sees logits over the task's classes.
    """

    name: str | None = None
    num_classes: int | None = None
    in_channels: int = 3
    pretrained: bool = False
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    model_class: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    head: str = "keep"
    class_map: list[int | None] | dict[int, int] | None = None

    @classmethod
    def coerce(cls, value: ClassifierSpec | Mapping[str, Any] | str, role: str = "model") -> ClassifierSpec:
        """Accepts a spec, a mapping (as stored in checkpoints) or a bare model name.

        Raises:
            TypeError: On unknown keys, naming them and the valid ones.
            ConfigError: On ``class_path``/``init_args`` keys (``model_class``/``model_args`` are meant).
        """
        if isinstance(value, str):
            return cls(name=value)
        if isinstance(value, Mapping) and {"class_path", "init_args"} & set(value):
            raise ConfigError(
                f"{role} spec: write model_class and model_args for a network by import path (class_path and "
                "init_args are Lightning's keys for the task, data and callbacks)"
            )
        return spec_from(cls, value, role, expected="a mapping or a model name")


def create_classifier(spec: ClassifierSpec, num_classes: int, role: str = "model") -> nn.Module:
    """Builds a classifier from a spec and loads its weights, if any.

    Args:
        spec: The spec; its ``num_classes`` (when set) must equal ``num_classes``, unless ``class_map`` maps the
            model's own classes onto them.
        num_classes: The task's number of classes.
        role: ``"teacher"``/``"student"`` for messages.

    Returns:
        The model; with ``class_map``, its output is mapped onto the task's classes by a forward hook.

    Raises:
        ConfigError: When the class counts disagree, the name, source, model class, ``head`` or ``class_map`` is
            invalid, or a hub id is not in the local cache.
        CheckpointError: When the checkpoint or pretrained weights are missing, unreadable or do not fit.

    Example::

        >>> model = create_classifier(ClassifierSpec(name="torchvision/resnet18"), num_classes=6)
        >>> type(model).__module__, model.fc.out_features
        ('torchvision.models.resnet', 6)
    """
    class_map, network_classes = _classes(spec, num_classes, role)
    if spec.head not in ("keep", "reinit"):
        raise ConfigError(f"{role}.head must be 'keep' or 'reinit', got {spec.head!r}")
    checkpoint = read_checkpoint(spec.checkpoint) if spec.checkpoint else None
    stored = _stored_spec(checkpoint, spec, role) if spec.name is None and spec.model_class is None else {}
    name, model_class = spec.name or stored.get("name"), spec.model_class or stored.get("model_class")
    if name is not None and model_class is not None:
        raise ConfigError(
            f"{role}: set either name ({name!r}) or model_class ({model_class!r}), not both (a command-line "
            f"override merges into the config's {role}: add name: null to it)"
        )
    if model_class is not None:
        if spec.pretrained:
            raise ConfigError(f"{role}: pretrained applies to named models; give {role}.checkpoint for {model_class!r}")
        model_args = spec.model_args or dict(stored.get("model_args") or {})
        model = build_from_model_class(model_class, model_args, network_classes, spec.in_channels, role)
    else:
        if spec.model_args:
            raise ConfigError(f"{role}.model_args go with model_class; the arguments of a named model go in kwargs")
        source, bare = split_source(name, spec.source or stored.get("source"), role)
        model, state, origin = build_network(
            source,
            bare,
            num_classes=network_classes,
            in_channels=spec.in_channels,
            pretrained=spec.pretrained,
            kwargs=dict(spec.kwargs),
            role=role,
        )
        if state is not None:
            load_weights(model, state, source=str(origin), role=role, head=_pretrained_head(model, state))
    if checkpoint is not None:
        load_weights(model, extract_state_dict(checkpoint), source=str(spec.checkpoint), role=role, head=spec.head)
    if class_map is not None:
        model.register_forward_hook(MappedLogits(class_map, num_classes, f"{role}.class_map"))
    return model


class MappedLogits:
    """A forward hook that maps a teacher's logits onto the task's classes (`map_logits`, temperature 1)."""

    def __init__(self, class_map: ClassMap, num_classes: int, who: str) -> None:
        self.class_map, self.num_classes, self.who = class_map, num_classes, who

    def __call__(self, _module: nn.Module, _inputs: tuple, output: object) -> Tensor:
        """Returns the mapped logits, which replace the model's output."""
        if not isinstance(output, Tensor):
            raise ConfigError(f"{self.who}: the model returns {type(output).__name__}, not a logits tensor to map")
        return map_logits(output, self.class_map, self.num_classes, who=self.who)


def _classes(spec: ClassifierSpec, num_classes: int, role: str) -> tuple[ClassMap | None, int]:
    """The validated class map (or ``None``) and the number of classes to build the network with."""
    if spec.class_map is None:
        if spec.num_classes is not None and spec.num_classes != num_classes:
            # "teacher", or "teachers.<id>" for one of several teachers
            mapping = f" (or map the teacher's classes onto the task's with {role}.class_map)"
            raise ConfigError(
                f"{role} is configured for {spec.num_classes} classes but the task has {num_classes}; "
                f"set {role}.num_classes to {num_classes} or leave it out" + mapping * role.startswith("teacher")
            )
        return None, num_classes
    who = f"{role}.class_map"
    if role == "student":
        raise ConfigError(f"{who}: a class map maps a teacher's classes onto the task's; a student predicts those")
    class_map = ClassMap.parse(spec.class_map, who)
    own = spec.num_classes or class_map.num_teacher_classes
    if own is None:
        raise ConfigError(f"{who} is a mapping, so set {role}.num_classes to the number of classes the {role} predicts")
    class_map.check(own, num_classes, who)
    return class_map, own


def _pretrained_head(model: nn.Module, state: Mapping[str, Tensor]) -> str:
    """``reinit`` when library weights were made for another class count (the classifier's shapes differ)."""
    prefix = classifier_prefix(model)
    own = model.state_dict()
    differs = any(
        key.startswith(f"{prefix}.") and key in own and tuple(value.shape) != tuple(own[key].shape)
        for key, value in state.items()
    )
    return "reinit" if prefix and differs else "keep"


def _stored_spec(checkpoint: Mapping[str, Any] | None, spec: ClassifierSpec, role: str) -> dict[str, Any]:
    """The model fields (name or model class, source, model_args) recorded in one of our run's checkpoints."""
    hparams = (checkpoint or {}).get("hyper_parameters") or {}
    stored = hparams.get("student")
    if not isinstance(stored, Mapping):
        stored = {key: getattr(stored, key, None) for key in ("name", "source", "model_class", "model_args")}
    if not (stored.get("name") or stored.get("model_class")):
        where = f" and checkpoint {Path(spec.checkpoint).name!r} does not record one" if spec.checkpoint else ""
        raise CheckpointError(f"{role}: no model name given{where}; set {role}.name (a timm model name)")
    return {key: stored.get(key) for key in ("name", "source", "model_class", "model_args")}
