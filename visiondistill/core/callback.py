"""The base class of every distillation callback and the function that sums their terms."""

from __future__ import annotations

import dataclasses
import math
import re
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn
from typing_extensions import override

from visiondistill.core.errors import ConfigError
from visiondistill.core.protocol import (
    ProtocolError,
    batch_inputs,
    freeze_teacher,
    get_student,
    get_teacher,
    module_device,
)
from visiondistill.core.teachers import (
    check_teacher_id,
    every_teacher,
    head_output,
    select_teacher,
    select_teacher_output,
)

#: The LightningModule attribute that holds the (epoch, batch) at which the teacher was last frozen.
_FROZEN_AT = "_visiondistill_teacher_frozen_at"


class DistillationCallback(Callback):
    """Base class: a Lightning callback that contributes one weighted term to the distillation loss.

    Subclasses implement `compute_loss` (the unweighted term) and, when they need hooks or
    learnable connectors, `setup_distillation`. The base class keeps the teacher frozen and in eval
    mode for the whole run, gives each callback a unique name used in logs, and owns the weight.

    The weight is ``base_weight × Π factors``: ``base_weight`` is the configured weight (the ``weight`` argument, or a
    value assigned to ``weight`` before ``fit``), and weight controllers (`WeightSchedule`,
    `AdaptiveDistillationWeights`) each set one factor through `scale_weight`, so several controllers compose and
    none overwrites the configured weight. ``weight`` holds the current product; the base, the factors and the
    product are checkpointed, so a resumed run continues with the same weight.

    Args:
        weight: Multiplier of the term in the total loss.
        name: Name used in logs (``train/distill/<name>``) and for connectors; defaults to the
            class's ``default_name``, suffixed ``_1``, ``_2``… when several callbacks share it.

    Raises:
        ValueError: When ``weight`` is negative or not finite.
    """

    default_name: ClassVar[str] = "distill"
    needs_teacher: ClassVar[bool] = True
    #: The id of the teacher this callback reads, with several teachers (docs/teachers.md); ``None``: the first (the
    #: logit terms: the teachers' ensemble). Subclasses take it as their ``teacher`` argument.
    teacher_id: str | None = None

    def __init__(self, weight: float = 1.0, name: str | None = None) -> None:
        super().__init__()
        weight = float(weight)
        if not weight >= 0 or weight == float("inf"):
            raise ConfigError(f"{type(self).__name__}: weight must be a finite number >= 0, got {weight}")
        if name is not None and not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise ConfigError(f"{type(self).__name__}: name {name!r} may hold only letters, digits, '_' and '-'")
        self.weight = weight
        self._base_weight = weight  # underscored: kept out of the state key, which must not change in training
        self._weight_factors: dict[str, float] = {}
        self._requested_name = name
        self.name = name or self.default_name

    # -- what subclasses implement --------------------------------------------------------------

    def setup_distillation(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Attaches hooks and creates connectors; called once from ``setup`` after the teacher is frozen."""

    def compute_loss(self, pl_module: pl.LightningModule, batch: Any, student_out: Any, teacher_out: Any) -> Tensor:
        """Returns the unweighted distillation term for one training batch."""
        raise NotImplementedError

    def effective_weight(self, trainer: pl.Trainer) -> float:
        """The weight applied at the current step (subclasses add warm-ups)."""
        return self.weight

    # -- the weight -------------------------------------------------------------------------------

    @property
    def base_weight(self) -> float:
        """The configured weight, before the factors of weight controllers."""
        return self._base_weight

    @property
    def weight_factors(self) -> dict[str, float]:
        """The factor each weight controller applies, by controller (a copy)."""
        return dict(self._weight_factors)

    def scale_weight(self, source: str, factor: float) -> float:
        """Sets the factor that ``source`` applies to the configured weight, and recomputes ``weight``.

        Args:
            source: Who sets the factor (a controller's ``state_key``); a later call from the same source replaces
                its factor, calls from other sources multiply with it.
            factor: A finite number >= 0.

        Returns:
            The new weight, ``base_weight × Π factors``.

        Raises:
            ValueError: For a negative or non-finite factor.

        Example::

            >>> callback = DistillationCallback(weight=2.0)
            >>> callback.scale_weight("schedule", 0.5), callback.scale_weight("adaptive", 3.0), callback.base_weight
            (1.0, 3.0, 2.0)
        """
        factor = float(factor)
        if not (math.isfinite(factor) and factor >= 0):
            raise ValueError(
                f"{type(self).__name__}: the weight factor from {source!r} must be finite and >= 0, got {factor}"
            )
        self._weight_factors[str(source)] = factor
        self.weight = self._base_weight * math.prod(self._weight_factors.values())
        return self.weight

    def clear(self) -> None:
        """Drops per-batch state (recorded features) after each training batch."""

    def remove_hooks(self) -> None:
        """Detaches every forward hook this callback registered."""

    # -- Lightning hooks ------------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        get_student(pl_module)
        teacher = get_teacher(pl_module, required=self.needs_teacher, who=type(self).__name__)
        check_teacher_id(pl_module, self.teacher_id, f"{type(self).__name__}.teacher")
        freeze_teacher(teacher)
        if not self._weight_factors:  # no controller has scaled it yet: a weight set by hand is the configured one
            self._base_weight = self.weight
        self._assign_unique_name(trainer)
        self.remove_hooks()
        self.setup_distillation(trainer, pl_module, stage)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for teacher in every_teacher(pl_module):
            freeze_teacher(teacher)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Once per step, whichever distillation callback comes first: walking a large teacher's modules and
        # parameters costs about a millisecond, which several callbacks would otherwise pay each.
        step = (trainer.current_epoch, batch_idx)
        if getattr(pl_module, _FROZEN_AT, None) != step:
            for teacher in every_teacher(pl_module):  # with several teachers (docs/teachers.md), each of them
                freeze_teacher(teacher)
            setattr(pl_module, _FROZEN_AT, step)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.clear()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.remove_hooks()

    @property
    @override
    def state_key(self) -> str:
        # Lightning needs the key before `setup` (where unique names are assigned), so it is built
        # from the requested name and the configuration: two callbacks of one class on different layers
        # differ, and two identical ones must be given distinct `name`s.
        identity = {
            key: value
            for key, value in vars(self).items()
            if not key.startswith("_") and key not in ("name", "weight") and isinstance(value, str | int | float | list)
        }
        return self._generate_state_key(name=self._requested_name, **identity)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "base_weight": self._base_weight, "weight_factors": dict(self._weight_factors)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Checkpoints written before controllers set factors here hold only "weight": the configured base (captured
        # in `setup`, which runs before the restore) stays, and the controllers rebuild their factors on it.
        if "base_weight" in state_dict:
            self._base_weight = float(state_dict["base_weight"])
            self._weight_factors = {str(k): float(v) for k, v in (state_dict.get("weight_factors") or {}).items()}
        self.weight = float(state_dict.get("weight", self.weight))

    # -- helpers for subclasses -----------------------------------------------------------------

    def teacher_network(self, pl_module: pl.LightningModule) -> nn.Module:
        """The teacher this callback reads: ``teacher_id``'s, or the first teacher (`core.teachers.select_teacher`)."""
        return select_teacher(pl_module, self.teacher_id, f"{type(self).__name__}.teacher")

    def teacher_output(self, pl_module: pl.LightningModule, teacher_out: Any) -> Any:
        """This step's output of the teacher this callback reads (``teacher_out``, the first's, by default)."""
        return select_teacher_output(pl_module, self.teacher_id, teacher_out, f"{type(self).__name__}.teacher")

    def _assign_unique_name(self, trainer: pl.Trainer) -> None:
        peers = [cb for cb in trainer.callbacks if isinstance(cb, DistillationCallback)]
        taken: set[str] = set()
        for callback in peers:
            base = callback._requested_name or callback.default_name
            name, suffix = base, 1
            while name in taken:
                name, suffix = f"{base}_{suffix}", suffix + 1
            taken.add(name)
            if callback is self:
                self.name = name
                return

    def add_adapter(self, pl_module: pl.LightningModule, adapter: nn.Module) -> nn.Module:
        """Registers a learnable connector in ``pl_module.distill_adapters`` (optimised and checkpointed)."""
        adapters = getattr(pl_module, "distill_adapters", None)
        if adapters is None:
            adapters = nn.ModuleDict()
            pl_module.distill_adapters = adapters
        elif not isinstance(adapters, nn.ModuleDict):
            raise TypeError(f"{type(pl_module).__name__}.distill_adapters must be an nn.ModuleDict")
        adapter = adapter.to(module_device(get_student(pl_module)))
        if self.name in adapters:
            existing = adapters[self.name]
            if _same_architecture(existing, adapter):
                return existing  # a second `fit` on the same module keeps the trained connector
        adapters[self.name] = adapter
        return adapter


def _same_architecture(a: nn.Module, b: nn.Module) -> bool:
    shapes_a = {k: v.shape for k, v in a.state_dict().items()}
    shapes_b = {k: v.shape for k, v in b.state_dict().items()}
    return type(a) is type(b) and shapes_a == shapes_b


def distillation_callbacks(trainer: pl.Trainer) -> list[DistillationCallback]:
    """The distillation callbacks attached to a trainer, in order."""
    return [cb for cb in trainer.callbacks if isinstance(cb, DistillationCallback)]


def full_precision(value: Any) -> Any:
    """``value`` with every floating-point tensor in it as float32, at any depth; anything else as it is.

    Tensors, and dicts, lists, tuples (named ones included) and dataclasses of them, are converted. Under mixed
    precision (``bf16-mixed``, ``16-mixed``) the networks' outputs and recorded features are half-precision
    tensors; softmax, logarithms and KL divergences of them lose the small probabilities that distillation
    transfers. A float32 tensor is returned itself, so in full precision this costs nothing.

    Example::

        >>> out = full_precision({"logits": torch.ones(1, dtype=torch.bfloat16), "labels": torch.ones(1).long()})
        >>> out["logits"].dtype, out["labels"].dtype
        (torch.float32, torch.int64)
    """
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return type(value)((key, full_precision(item)) for key, item in value.items())
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(full_precision(item) for item in value))
    if isinstance(value, list | tuple):
        return type(value)(full_precision(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: full_precision(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **fields)
    return value


def autocast_off(device: torch.device) -> AbstractContextManager:
    """A context in which autocast is off on ``device``'s type (float32 tensors stay float32, matmuls included)."""
    return torch.autocast(device_type=device.type, enabled=False)


def distillation_loss(pl_module: pl.LightningModule, batch: Any, student_out: Any, teacher_out: Any) -> Tensor:
    """Sums the weighted terms of every distillation callback on the trainer.

    Call it from ``training_step`` after running the student and (under ``torch.no_grad()``) the
    teacher on the same batch: the teacher runs once per step, and every callback reads the same ``teacher_out``.
    Each weighted term is logged as ``train/distill/<name>`` (a tensor: no host-device synchronisation per step;
    the epoch means are reduced across processes once, at the epoch's end). With no distillation callback on the
    trainer it returns a zero that keeps the graph intact.

    Under mixed precision the terms are computed in float32: each callback gets `full_precision` outputs and runs
    with autocast off (callbacks cast their recorded features themselves; `_FeatureDistillation.recorded_pairs`
    does it for the feature callbacks).

    Args:
        pl_module: The LightningModule (it must be attached to a trainer).
        batch: The training batch.
        student_out: The student's output on the batch.
        teacher_out: The teacher's output on the batch (``None`` when there is no teacher).

    Returns:
        A scalar float32 tensor.
    """
    trainer = pl_module.trainer
    device = pl_module.device
    total = torch.zeros((), device=device)
    try:  # given explicitly: Lightning cannot infer it from batches such as (images, [target dicts])
        batch_size = batch_inputs(batch).shape[0]
    except ProtocolError:
        batch_size = None
    callbacks = [(cb, cb.effective_weight(trainer)) for cb in distillation_callbacks(trainer)]
    callbacks = [(cb, weight) for cb, weight in callbacks if weight != 0]
    if not callbacks:
        return total
    student_out, teacher_out = full_precision(student_out), full_precision(teacher_out)
    with autocast_off(device):
        for callback, weight in callbacks:
            # On a multi-head student (docs/multitask.md) each term reads the head of the teacher it names.
            head_out = head_output(pl_module, callback.teacher_id, student_out, f"{type(callback).__name__}.teacher")
            term = weight * callback.compute_loss(pl_module, batch, head_out, teacher_out)
            pl_module.log(
                f"train/distill/{callback.name}", term.detach(), on_step=True, on_epoch=True, batch_size=batch_size
            )
            total = total + term
    return total
