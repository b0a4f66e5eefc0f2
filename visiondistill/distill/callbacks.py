"""Distillation callbacks that turn model outputs and recorded features into loss terms.

Each callback works on any LightningModule that follows the protocol of `visiondistill.distill`:
``student`` and ``teacher`` attributes, and ``distillation_loss(...)`` added to the task loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from visiondistill.core.callback import DistillationCallback
from visiondistill.core.class_map import ClassMap, map_logits
from visiondistill.core.errors import ConfigError, VisionDistillError
from visiondistill.core.protocol import (
    example_inputs,
    get_student,
    module_device,
    output_logits,
    targets_or,
)
from visiondistill.core.recorder import FeatureRecorder, LayerSpec, probe_features
from visiondistill.core.teachers import ensemble_logits, teacher_ids, teacher_weights
from visiondistill.distill import losses


class ShapeMismatchError(VisionDistillError, ValueError):
    """Student and teacher outputs or features whose shapes cannot be reconciled."""


def _check_logits(student: Tensor, teacher: Tensor, who: str) -> None:
    if student.shape != teacher.shape:
        raise ShapeMismatchError(
            f"{who}: student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ; "
            "teacher and student must predict the same number of classes, or give class_map (teacher class -> "
            "student class) for a teacher trained on other classes"
        )


def teacher_logits(
    callback: DistillationCallback,
    pl_module: pl.LightningModule,
    student: Tensor,
    teacher_out: Any,
    class_map: ClassMap | None,
    temperature: float,
) -> Tensor:
    """The teacher logits a logit term reads, on the student's classes (class map applied, shape checked).

    With several teachers and no ``teacher`` named on the callback: the teachers' weighted ensemble of soft targets
    at ``temperature`` (`visiondistill.core.teachers.ensemble_logits`); else the named (or only) teacher's logits.
    """
    ids = teacher_ids(pl_module)
    if callback.teacher_id is None and len(ids) > 1:
        outputs = getattr(pl_module, "teacher_outputs", None) or {}
        missing = [teacher_id for teacher_id in ids if teacher_id not in outputs]
        if missing:
            raise ConfigError(
                f"{callback.name}: no output of teachers {missing} in this step; the task's training_step must run "
                "every teacher (DistillationTask.teacher_forward does)"
            )
        logits = []
        for teacher_id in ids:
            mapped = _mapped_teacher(student, output_logits(outputs[teacher_id]), class_map, temperature, callback.name)
            _check_logits(student, mapped, f"{callback.name} (teacher {teacher_id!r})")
            logits.append(mapped)
        return ensemble_logits(logits, list(teacher_weights(pl_module).values()), temperature)
    teacher = output_logits(callback.teacher_output(pl_module, teacher_out))
    teacher = _mapped_teacher(student, teacher, class_map, temperature, callback.name)
    _check_logits(student, teacher, callback.name)
    return teacher


def _mapped_teacher(
    student: Tensor, teacher: Tensor, class_map: ClassMap | None, temperature: float, who: str
) -> Tensor:
    """The teacher's logits on the student's classes: unchanged without a class map, else `map_logits` at ``T``."""
    if class_map is None:
        return teacher
    return map_logits(teacher, class_map, num_student=student.shape[1], temperature=temperature, who=f"{who}.class_map")


class LogitDistillation(DistillationCallback):
    """Knowledge distillation on logits (Hinton et al. 2015): ``T² · KL(softmax(t/T) ‖ softmax(s/T))``.

    Args:
        temperature: Softmax temperature ``T`` (> 0).
        weight: Multiplier of the term.
        name: Log name (default ``kd``).
        class_map: For a teacher trained on more or other classes: teacher class -> student class, as a list (one
            student index or ``None`` per teacher class) or a mapping (unlisted teacher classes dropped); see
            `visiondistill.core.class_map`. The soft target of each student class is then the sum of the teacher's
            probabilities ``softmax(t/T)`` over its teacher classes, renormalised over the kept ones. Every
            student class must receive a teacher class. ``None``: the same classes.
        teacher: With several teachers (docs/teachers.md): the id of the one teacher this term reads (one term per
            teacher: one callback per id, each with its weight); ``None`` (default): their weighted ensemble,
            ``Σ w_i softmax(t_i/T) / Σ w_i`` as the soft target (`visiondistill.core.teachers.ensemble_logits`).
            With one teacher, leave it out.

    Raises:
        ValueError: When ``temperature`` is not positive.
        ConfigError: On a malformed ``class_map`` (here), or one that does not fit the logits (first step).

    Example::

        >>> callback = LogitDistillation(temperature=4.0, weight=1.0)
        >>> callback.name
        'kd'
    """

    default_name = "kd"
    #: Reads only the teacher's logits, which `visiondistill.distill.cache.TeacherOutputCache` can serve.
    cacheable_teacher_output = True

    def __init__(
        self,
        temperature: float = 4.0,
        weight: float = 1.0,
        name: str | None = None,
        class_map: list[int | None] | dict[int, int] | None = None,
        teacher: str | None = None,
    ) -> None:
        super().__init__(weight=weight, name=name)
        self.teacher_id = teacher
        if not temperature > 0:
            raise ConfigError(f"LogitDistillation: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.class_map = ClassMap.parse(class_map, "LogitDistillation.class_map") if class_map is not None else None

    @override
    def compute_loss(self, pl_module: pl.LightningModule, batch: Any, student_out: Any, teacher_out: Any) -> Tensor:
        student = output_logits(student_out)
        teacher = teacher_logits(self, pl_module, student, teacher_out, self.class_map, self.temperature)
        return losses.kd_loss(student, teacher, temperature=self.temperature)


class DecoupledDistillation(DistillationCallback):
    """Decoupled knowledge distillation (DKD, Zhao et al. 2022): ``α·TCKD + β·NCKD``, warmed up linearly.

    The weight in the ``e``-th epoch (counted from 1) is ``weight · min(e / warmup_epochs, 1)``, as in mdistiller.

    Args:
        alpha: Weight of the target-class term.
        beta: Weight of the non-target-class term.
        temperature: Softmax temperature.
        warmup_epochs: Epochs of linear warm-up (0 disables it).
        weight: Multiplier of the term.
        name: Log name (default ``dkd``).
        class_map: Teacher class -> student class, as in `LogitDistillation` (mapped at ``temperature``); the
            targets are the student's classes.
        teacher: With several teachers: one teacher's id, or ``None`` for their ensemble, as in `LogitDistillation`.

    Raises:
        ValueError: On a non-positive temperature, negative alpha/beta or negative warm-up.

    Example::

        >>> DecoupledDistillation(beta=2.0, warmup_epochs=5).beta
        2.0
    """

    default_name = "dkd"
    #: Reads only the teacher's logits, which `visiondistill.distill.cache.TeacherOutputCache` can serve.
    cacheable_teacher_output = True

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: int = 20,
        weight: float = 1.0,
        name: str | None = None,
        class_map: list[int | None] | dict[int, int] | None = None,
        teacher: str | None = None,
    ) -> None:
        super().__init__(weight=weight, name=name)
        self.teacher_id = teacher
        self.class_map = ClassMap.parse(class_map, "DecoupledDistillation.class_map") if class_map is not None else None
        if not temperature > 0:
            raise ConfigError(f"DecoupledDistillation: temperature must be > 0, got {temperature}")
        if alpha < 0 or beta < 0:
            raise ConfigError(f"DecoupledDistillation: alpha and beta must be >= 0, got {alpha}, {beta}")
        if warmup_epochs < 0:
            raise ConfigError(f"DecoupledDistillation: warmup_epochs must be >= 0, got {warmup_epochs}")
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)
        self.warmup_epochs = int(warmup_epochs)

    @override
    def effective_weight(self, trainer: pl.Trainer) -> float:
        # mdistiller counts epochs from 1, so its first epoch already trains with weight 1/W.
        return self.weight * losses.dkd_warmup(trainer.current_epoch + 1, self.warmup_epochs)

    @override
    def compute_loss(self, pl_module: pl.LightningModule, batch: Any, student_out: Any, teacher_out: Any) -> Tensor:
        student = output_logits(student_out)
        teacher = teacher_logits(self, pl_module, student, teacher_out, self.class_map, self.temperature)
        # Unlabeled images (docs/unlabeled.md) have no target: DKD splits their logits at the teacher's prediction.
        targets = targets_or(batch, teacher.argmax(dim=1))
        return losses.dkd_loss(
            student, teacher, targets, alpha=self.alpha, beta=self.beta, temperature=self.temperature
        )


class _FeatureDistillation(DistillationCallback):
    """Shared machinery of callbacks on pairs of (student layer, teacher layer) features."""

    def __init__(
        self,
        student_layers: Sequence[LayerSpec],
        teacher_layers: Sequence[LayerSpec],
        weight: float,
        name: str | None,
        teacher: str | None = None,
    ) -> None:
        super().__init__(weight=weight, name=name)
        self.teacher_id = teacher
        self.student_layers = list(student_layers)
        self.teacher_layers = list(teacher_layers)
        if not self.student_layers:
            raise ConfigError(f"{type(self).__name__}: give at least one student/teacher layer pair")
        if len(self.student_layers) != len(self.teacher_layers):
            raise ConfigError(
                f"{type(self).__name__}: {len(self.student_layers)} student layers {self.student_layers} but "
                f"{len(self.teacher_layers)} teacher layers {self.teacher_layers}; they are matched pairwise"
            )
        self._student_recorder: FeatureRecorder | None = None
        self._teacher_recorder: FeatureRecorder | None = None

    @override
    def setup_distillation(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        student, teacher = get_student(pl_module), self.teacher_network(pl_module)
        # Resolve names first: an unknown layer fails here with the valid choices, before any forward.
        self._student_recorder = FeatureRecorder(student, self.student_layers, role="student")
        self._teacher_recorder = FeatureRecorder(teacher, self.teacher_layers, role="teacher", detach=True)
        inputs = example_inputs(trainer, pl_module, stage)[:2].to(module_device(student))
        student_features = probe_features(student, inputs, self.student_layers, role="student")
        teacher_features = probe_features(teacher, inputs, self.teacher_layers, role="teacher")
        for s_layer, t_layer in zip(self.student_layers, self.teacher_layers, strict=True):
            self.check_pair(pl_module, s_layer, t_layer, student_features[s_layer], teacher_features[t_layer])

    def check_pair(
        self, pl_module: pl.LightningModule, student_layer: LayerSpec, teacher_layer: LayerSpec, s: Tensor, t: Tensor
    ) -> None:
        """Validates one pair of probe features (and creates any connector); subclasses override."""

    def recorded_pairs(self) -> list[tuple[Tensor, Tensor]]:
        """The (student, teacher) feature maps recorded in the current training step, as float32.

        Under mixed precision the recorded maps are bf16/fp16; the terms (and connectors) run in float32 (a no-op in
        full precision), as `visiondistill.core.callback.distillation_loss` runs them with autocast off.
        """
        assert self._student_recorder is not None and self._teacher_recorder is not None, "setup() has not run"
        return [
            (self._student_recorder[s].float(), self._teacher_recorder[t].float())
            for s, t in zip(self.student_layers, self.teacher_layers, strict=True)
        ]

    @override
    def clear(self) -> None:
        for recorder in (self._student_recorder, self._teacher_recorder):
            if recorder is not None:
                recorder.clear()

    @override
    def remove_hooks(self) -> None:
        for recorder in (self._student_recorder, self._teacher_recorder):
            if recorder is not None:
                recorder.remove()
        self._student_recorder = self._teacher_recorder = None


class AttentionTransfer(_FeatureDistillation):
    """Attention transfer (Zagoruyko & Komodakis 2017) on one or more matched stage pairs.

    The term is the sum over pairs of ``mean((q_s − q_t)²)`` with ``q = L2-normalise(mean_c A_c²)``;
    the student's attention map is resized to the teacher's H×W. Channel counts may differ.

    Args:
        student_layers: Student module paths or stage indices (``-1`` = last stage).
        teacher_layers: Teacher layers, matched pairwise with ``student_layers``.
        p: Power of the activations in the attention map.
        weight: Multiplier of the term (1000 in the paper's code, as ``β``).
        name: Log name (default ``attention_transfer``).
        teacher: With several teachers (docs/teachers.md): the id of the teacher whose layers are read; ``None``:
            the first.

    Raises:
        ValueError: When the layer lists are empty or of different lengths.
        LayerNotFoundError: At setup, for a layer the model does not have (the message lists valid ones).

    Example::

        >>> AttentionTransfer(student_layers=[-2, -1], teacher_layers=[-2, -1]).weight
        1000.0
    """

    default_name = "attention_transfer"

    def __init__(
        self,
        student_layers: LayerSpec | Sequence[LayerSpec] = (-1,),
        teacher_layers: LayerSpec | Sequence[LayerSpec] = (-1,),
        p: int = 2,
        weight: float = 1000.0,
        name: str | None = None,
        teacher: str | None = None,
    ) -> None:
        super().__init__(_as_list(student_layers), _as_list(teacher_layers), weight=weight, name=name, teacher=teacher)
        self.p = int(p)

    @override
    def compute_loss(self, pl_module: pl.LightningModule, batch: Any, student_out: Any, teacher_out: Any) -> Tensor:
        pairs = self.recorded_pairs()
        return sum(losses.attention_transfer_loss(s, t, p=self.p) for s, t in pairs)


class FeatureHint(_FeatureDistillation):
    """FitNets hint (Romero et al. 2015): MSE between a learned connector of a student feature and a teacher feature.

    The connector is a 1×1 convolution and BatchNorm from the student's to the teacher's channels; when
    the spatial sizes differ by an integer factor it also downsamples (strided convolution) or
    upsamples (bilinear) the student feature. It is created in ``setup`` from a dry forward, lives in
    ``pl_module.distill_adapters[<name>]``, and is optimised and checkpointed with the student.

    Args:
        student_layer: Student module path or stage index.
        teacher_layer: Teacher module path or stage index.
        weight: Multiplier of the term.
        name: Log name (default ``hint``).
        teacher: With several teachers: the id of the teacher whose layer is read; ``None``: the first.

    Raises:
        LayerNotFoundError: At setup, for a layer the model does not have.
        ShapeMismatchError: At setup, when the feature maps' spatial sizes differ by a non-integer
            factor or aspect ratio, which no connector can reconcile.

    Example::

        >>> FeatureHint(student_layer="layer3", teacher_layer=-2).name
        'hint'
    """

    default_name = "hint"

    def __init__(
        self,
        student_layer: LayerSpec = -1,
        teacher_layer: LayerSpec = -1,
        weight: float = 1.0,
        name: str | None = None,
        teacher: str | None = None,
    ) -> None:
        super().__init__([student_layer], [teacher_layer], weight=weight, name=name, teacher=teacher)
        self._connector: nn.Module | None = None

    @override
    def check_pair(
        self, pl_module: pl.LightningModule, student_layer: LayerSpec, teacher_layer: LayerSpec, s: Tensor, t: Tensor
    ) -> None:
        connector = HintConnector.for_shapes(tuple(s.shape), tuple(t.shape), student_layer, teacher_layer)
        self._connector = self.add_adapter(pl_module, connector)

    @override
    def compute_loss(self, pl_module: pl.LightningModule, batch: Any, student_out: Any, teacher_out: Any) -> Tensor:
        assert self._connector is not None, "setup() has not run"
        ((s, t),) = self.recorded_pairs()
        return losses.hint_loss(self._connector(s), t)


class HintConnector(nn.Module):
    """Maps a student feature map onto a teacher feature map's channels and spatial size.

    Args:
        in_channels: Student channels.
        out_channels: Teacher channels.
        down: Integer downsampling factor (strided convolution), 1 for none.
        up: Integer upsampling factor (bilinear, before the convolution), 1 for none.
    """

    def __init__(self, in_channels: int, out_channels: int, down: int = 1, up: int = 1) -> None:
        super().__init__()
        self.up = up
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=down, stride=down, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)

    @classmethod
    def for_shapes(
        cls,
        student_shape: tuple[int, ...],
        teacher_shape: tuple[int, ...],
        student_layer: LayerSpec,
        teacher_layer: LayerSpec,
    ) -> HintConnector:
        """Builds the connector between two ``N×C×H×W`` shapes, or explains why none exists."""
        (_, cs, hs, ws), (_, ct, ht, wt) = student_shape, teacher_shape
        down = up = 1
        if (hs, ws) != (ht, wt):
            if hs % ht == 0 and ws % wt == 0 and hs // ht == ws // wt:
                down = hs // ht
            elif ht % hs == 0 and wt % ws == 0 and ht // hs == wt // ws:
                up = ht // hs
            else:
                raise ShapeMismatchError(
                    f"FeatureHint: student layer {student_layer!r} gives {tuple(student_shape)} and teacher layer "
                    f"{teacher_layer!r} gives {tuple(teacher_shape)}; their spatial sizes {hs}×{ws} and {ht}×{wt} "
                    "differ by a non-integer factor or aspect ratio, which no connector can reconcile. "
                    "Pick layers at the same reduction (e.g. the same stage index)."
                )
        return cls(cs, ct, down=down, up=up)

    @override
    def forward(self, x: Tensor) -> Tensor:
        if self.up > 1:
            x = F.interpolate(x, scale_factor=self.up, mode="bilinear", align_corners=False)
        return self.norm(self.conv(x))


def _as_list(layers: LayerSpec | Sequence[LayerSpec]) -> list[LayerSpec]:
    if isinstance(layers, str | int):
        return [layers]
    return list(layers)
