"""Shared teacher/student logic of every task module."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from typing_extensions import override

from visiondistill.core.callback import distillation_loss, full_precision
from visiondistill.core.errors import ConfigError, ConfigTypeError
from visiondistill.core.protocol import freeze_teacher, split_training_batch, take_rows
from visiondistill.core.teachers import parse_teacher_entries

OptimizerName = Literal["adamw", "sgd"]
SchedulerName = Literal["cosine", "constant"]


class DistillationTask(pl.LightningModule):
    """Base LightningModule: a trainable ``student``, an optional frozen ``teacher``, and the training loop.

    A task declares its networks with class attributes and keeps only its own arguments::

        class ClassificationTask(DistillationTask):
            spec_class = ClassifierSpec  # what `student`/`teacher` are coerced to (it has an ``in_channels`` field)
            model_factory = staticmethod(create_classifier)  # (spec, num_outputs, role) -> nn.Module

            def __init__(self, student, teacher=None, num_classes=6, class_names=None, label_smoothing=0.0, **kwargs):
                super().__init__(student, teacher, num_outputs=num_classes, output_names=class_names, **kwargs)

    Here the specs are coerced (mappings from YAML or checkpoints become spec objects), teacher and student are
    checked to take the same input channels, the output names are checked against their count, both networks
    are built, and the hyper-parameters are recorded (the specs as plain dicts). The shared optimiser arguments
    pass through ``**kwargs``: LightningCLI (jsonargparse) follows ``**kwargs`` into this signature, so
    ``visiondistill fit --print_config`` lists them for every task with their types and defaults.

    Subclasses implement `task_loss`, `evaluate_batch` (one validation or test batch) and `log_epoch_metrics` (the
    epoch's metrics); validation and test dispatch to them here. ``training_step`` runs the student, runs the
    teacher under ``torch.no_grad()`` on the same augmented batch, and adds `visiondistill.distill.distillation_loss`
    to the task loss. Without a teacher (teacher runs and from-scratch baselines) the same module simply trains the
    student.

    The teacher's weights are not written to this module's checkpoints (they come from the teacher's
    own checkpoint), which keeps a student checkpoint as small as the student.

    Args:
        student: Spec of the network to train (a ``spec_class`` instance or a mapping of its fields).
        teacher: Spec of the frozen network to distil from, or ``None``.
        optimizer: ``"adamw"`` or ``"sgd"`` (momentum 0.9, Nesterov).
        lr: Peak learning rate.
        weight_decay: Weight decay.
        warmup_epochs: Linear warm-up length, in epochs (fractions allowed).
        scheduler: ``"cosine"`` decay to zero after warm-up, or ``"constant"``.
        channels_last: Keep student, teacher and input batches in the ``channels_last`` memory format (NHWC): faster
            convolutions on GPUs with tensor cores, above all under ``bf16-mixed``/``16-mixed``; see docs/speed.md.
        compile: Compile student and teacher with ``torch.compile`` (`nn.Module.compile`, in place: parameter names,
            checkpoints and layer paths stay the same). The first steps are slow while it compiles; off by default.
        teachers: Several frozen teachers instead of ``teacher``: a list of specs (mappings), each with an optional
            ``id`` (default ``t0``, ``t1``…) and ``weight`` (> 0, default 1) for their ensemble. They are kept in
            ``self.teachers`` (an ``nn.ModuleDict`` by id), their weights in ``self.teacher_weights``, and
            ``self.teacher`` is the first; see `visiondistill.core.teachers` and docs/teachers.md.
        num_outputs: The subclass's output count (its ``outputs_arg``: classes, keypoints …).
        output_names: The subclass's output names (its ``names_arg``), or ``None`` to read them from the datamodule.
        **recorded: Private keys that come back from a checkpoint's hyper-parameters (``_class_path``): the
            subclasses take ``**kwargs``, so Lightning's ``load_from_checkpoint`` passes every recorded key on.

    Raises:
        ValueError: On a bad optimiser setting, output names that do not match their count, or a teacher that
            takes other input channels than the student.
        TypeError: On an unknown argument, or a spec of another type or with unknown keys.
    """

    #: The spec dataclass of the task's networks: a ``coerce(value, role)`` classmethod and an ``in_channels`` field.
    spec_class: ClassVar[type]
    #: Builds one network: ``model_factory(spec, num_outputs, role)``; wrap a function in ``staticmethod``.
    model_factory: ClassVar[Callable[[Any, int, str], nn.Module]]
    #: The subclass's arguments (and attributes) holding the output count and names, and its datamodule's.
    outputs_arg: ClassVar[str] = "num_classes"
    names_arg: ClassVar[str] = "class_names"

    def __init__(
        self,
        student: Any,
        teacher: Any | None = None,
        optimizer: OptimizerName = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 1.0,
        scheduler: SchedulerName = "cosine",
        channels_last: bool = False,
        compile: bool = False,
        teachers: Sequence[Mapping[str, Any]] | None = None,
        *,
        num_outputs: int,
        output_names: Sequence[str] | None = None,
        **recorded: Any,
    ) -> None:
        unknown = sorted(key for key in recorded if not key.startswith("_"))
        if unknown:
            raise ConfigTypeError(f"{type(self).__name__} got unexpected arguments {unknown}")
        if lr <= 0:
            raise ConfigError(f"lr must be > 0, got {lr}")
        if optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")
        if scheduler not in ("cosine", "constant"):
            raise ConfigError(f"scheduler must be 'cosine' or 'constant', got {scheduler!r}")
        if output_names is not None and len(output_names) != num_outputs:
            raise ConfigError(f"{self.names_arg} has {len(output_names)} names but {self.outputs_arg} is {num_outputs}")
        student_spec = self.spec_class.coerce(student, role="student")
        if teacher is not None and teachers is not None:
            raise ConfigError(
                "give either `teacher` (one teacher) or `teachers` (a list of teachers with ids and weights), not both"
            )
        entries = parse_teacher_entries(teachers) if teachers is not None else []
        roles = {teacher_id: f"teachers.{teacher_id}" for teacher_id, _, _ in entries}
        teacher_specs = {tid: self.spec_class.coerce(fields, role=roles[tid]) for tid, _, fields in entries}
        teacher_spec = self.spec_class.coerce(teacher, role="teacher") if teacher is not None else None
        if teacher_spec is None and teacher_specs:
            teacher_spec = next(iter(teacher_specs.values()))
        for teacher_id, spec in teacher_specs.items() or {"teacher": teacher_spec}.items():
            if spec is not None and spec.in_channels != student_spec.in_channels:
                raise ConfigError(
                    f"{roles.get(teacher_id, 'teacher')} takes {spec.in_channels} input channels but the student takes "
                    f"{student_spec.in_channels}; they see the same images, so set the same in_channels"
                )
        super().__init__()
        self.student = self.model_factory(student_spec, num_outputs, "student")
        #: Every teacher by id (several teachers only; ``teacher`` is the first of them), and their ensemble weights.
        self.teachers: nn.ModuleDict | None = None
        self.teacher_weights: dict[str, float] = {teacher_id: weight for teacher_id, weight, _ in entries}
        self.teacher_outputs: dict[str, Any] = {}
        if teacher_specs:
            self.teachers = nn.ModuleDict(
                {tid: self.model_factory(spec, num_outputs, roles[tid]) for tid, spec in teacher_specs.items()}
            )
            self.teacher = next(iter(self.teachers.values()))
        else:
            self.teacher = self.model_factory(teacher_spec, num_outputs, "teacher") if teacher_spec else None
        for network in self.teachers.values() if self.teachers is not None else [self.teacher]:
            freeze_teacher(network)
        self.distill_adapters = nn.ModuleDict()
        self.optimizer_name, self.lr, self.weight_decay = optimizer, lr, weight_decay
        self.warmup_epochs, self.scheduler_name = warmup_epochs, scheduler
        self.channels_last, self.compile_networks = bool(channels_last), bool(compile)
        for network in (self.student, *(self.teachers.values() if self.teachers is not None else [self.teacher])):
            if network is not None and self.channels_last:
                network.to(memory_format=torch.channels_last)
                # A pre-hook rather than a batch hook: inputs of every forward (training, evaluation, probes, export
                # checks) arrive in the networks' layout, and a datamodule's batch hooks stay its own.
                network.register_forward_pre_hook(_channels_last_input)
            if network is not None and self.compile_networks:
                network.compile()  # in place (not torch.compile(network)): state-dict keys and layer paths unchanged
        self._record_hyperparameters(student_spec, teacher_spec, output_names)
        if self.teachers is not None:
            self.hparams["teachers"] = [
                {"id": tid, "weight": weight, **dataclasses.asdict(teacher_specs[tid])} for tid, weight, _ in entries
            ]
            self.hparams["teacher"] = None  # the first teacher is in `teachers`; one place per setting

    # -- the protocol ---------------------------------------------------------------------------

    @override
    def train(self, mode: bool = True) -> DistillationTask:
        super().train(mode)
        # Lightning calls .train() on the whole module every epoch
        for network in self.teachers.values() if self.teachers is not None else [self.teacher]:
            freeze_teacher(network)
        return self

    @override
    def forward(self, x: Tensor) -> Any:
        return self.student(x)

    def task_loss(self, student_out: Any, batch: Any) -> Tensor:
        """The supervised loss of the task on one batch."""
        raise NotImplementedError

    def teacher_forward(self, inputs: Tensor) -> Any:
        """The teacher's output on a batch (no gradients), or ``None`` without a teacher.

        A teacher-output cache (`visiondistill.distill.cache.TeacherOutputCache`) that holds this step's outputs sets
        ``cached_teacher_output`` before the step; it is returned (once) instead of running the teacher.

        With several teachers each runs once; the first one's output is returned and every output is kept in
        ``teacher_outputs`` (by id) for the callbacks that read another teacher or the ensemble.
        """
        cached = getattr(self, "cached_teacher_output", None)
        if cached is not None:
            self.cached_teacher_output = None
            return cached
        if self.teachers is not None:
            with torch.no_grad():
                self.teacher_outputs = {tid: network(inputs) for tid, network in self.teachers.items()}
            return next(iter(self.teacher_outputs.values()))
        if self.teacher is None:
            return None
        with torch.no_grad():
            return self.teacher(inputs)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        # With unlabeled images ({"labeled": …, "unlabeled": …} batches) both run through the networks at once; the
        # task loss reads the labeled rows only, the distillation terms every row (docs/unlabeled.md).
        step = split_training_batch(batch)
        inputs = step.inputs
        student_out = self.student(inputs)
        teacher_out = self.teacher_forward(inputs)  # once per step: every distillation callback reads this output
        # The supervised loss in float32 (a no-op in full precision): softmax/log of bf16 logits lose the small terms.
        labeled_out = take_rows(student_out, step.num_labeled)
        task_loss = self.task_loss(full_precision(labeled_out), step.labeled)
        distill = distillation_loss(self, step.distill, student_out, teacher_out)
        loss = task_loss + distill
        self.teacher_outputs = {}  # drop the step's teacher outputs (with several teachers) before the next one
        batch_size = inputs.shape[0]
        # Tensors, no prog_bar: Lightning turns progress-bar values into Python numbers at every step (a host-device
        # sync on a GPU); logged values are read only every `log_every_n_steps`, and epoch means at the epoch's end.
        self.log("train/task_loss", task_loss.detach(), on_step=False, on_epoch=True, batch_size=batch_size)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, batch_size=batch_size)
        self.on_train_outputs(labeled_out, step.labeled)
        return loss

    def on_train_outputs(self, student_out: Any, batch: Any) -> None:
        """Hook for subclasses to update training metrics."""

    # -- evaluation: subclasses implement `evaluate_batch` and `log_epoch_metrics` ----------------

    def evaluate_batch(self, batch: Any, stage: str) -> Tensor:
        """Runs the student on a validation or test batch, updates the ``stage`` metrics and returns the loss."""
        raise NotImplementedError

    def log_epoch_metrics(self, stage: str) -> None:
        """Logs (and resets) the epoch's accumulated ``stage`` metrics; ``stage`` is ``"val"`` or ``"test"``."""

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.evaluate_batch(batch, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.evaluate_batch(batch, "test")

    @override
    def on_validation_epoch_end(self) -> None:
        self.log_epoch_metrics("val")

    @override
    def on_test_epoch_end(self) -> None:
        self.log_epoch_metrics("test")

    # -- shared by the task modules --------------------------------------------------------------

    def _record_hyperparameters(self, student_spec: Any, teacher_spec: Any, output_names: Sequence[str] | None) -> None:
        """Saves the ``__init__`` arguments of this class and its subclasses, with the model specs as plain dicts.

        Lightning collects the arguments of every ``__init__`` on the way up from here (the subclass's
        ``**kwargs`` included), so the optimiser arguments are recorded with their defaults. Output names left to
        the datamodule are not recorded (Lightning would see the datamodule's value as a clash). Under LightningCLI
        the config is recorded, ``_class_path`` included, which ``visiondistill validate --ckpt_path …`` reads back.
        Plain dicts keep checkpoints loadable with torch's safe loader and without visiondistill.
        """
        ignore = ["num_outputs", "output_names"] + ([self.names_arg] if output_names is None else [])
        self.save_hyperparameters(ignore=ignore, frame=inspect.currentframe().f_back)
        self.hparams["student"] = dataclasses.asdict(student_spec)
        self.hparams["teacher"] = dataclasses.asdict(teacher_spec) if teacher_spec is not None else None
        self.student_spec, self.teacher_spec = student_spec, teacher_spec

    def check_datamodule(self, classes_note: str = "") -> Any:
        """Checks the attached datamodule's output count and channels against the model; adopts its output names.

        The datamodule's count and names are read under the task's ``outputs_arg`` and ``names_arg``
        (``num_classes``/``class_names``, ``num_keypoints``/``keypoint_names``).

        Args:
            classes_note: Words added after the data's count in the message (e.g. "(background included)").

        Returns:
            The datamodule, or ``None`` when the module is not attached to one.

        Raises:
            ValueError: When the output count or the channel count differ, naming the setting to change.
        """
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return None
        data_count, count = getattr(datamodule, self.outputs_arg, None), getattr(self, self.outputs_arg)
        if data_count is not None and data_count != count:
            note = f" {classes_note}" if classes_note else ""
            what = self.outputs_arg.removeprefix("num_")
            raise ConfigError(
                f"the data has {data_count} {what}{note} but the model is built for {count}; "
                f"set model.init_args.{self.outputs_arg}: {data_count}"
            )
        data_channels = getattr(datamodule, "in_channels", None)
        student_channels = self.student_spec.in_channels
        if data_channels is not None and data_channels != student_channels:
            raise ConfigError(
                f"the data has {data_channels} channels but the student takes {student_channels}; "
                "set the same number of input channels on the data and the models"
            )
        names = getattr(datamodule, self.names_arg, None)
        if self.hparams.get(self.names_arg) is None and names is not None:
            setattr(self, self.names_arg, list(names))
        return datamodule

    # -- optimisation ---------------------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student and connector parameters (never the teacher's)."""
        params = list(self.student.parameters()) + list(self.distill_adapters.parameters())
        return [p for p in params if p.requires_grad]

    @override
    def configure_optimizers(self) -> Any:
        params = self.trainable_parameters()
        if self.optimizer_name == "sgd":
            optimizer = torch.optim.SGD(params, lr=self.lr, momentum=0.9, nesterov=True, weight_decay=self.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.scheduler_name == "constant" and self.warmup_epochs <= 0:
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, self.trainer.max_epochs or 1)
        warmup = min(total, int(round(self.warmup_epochs * total / epochs)))
        cosine = self.scheduler_name == "cosine"

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if not cosine:
                return 1.0
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints ----------------------------------------------------------------------------

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith(("teacher.", "teachers."))]:
            del state[key]
        # The class path lets `visiondistill.reporting.loader` rebuild this module from the file alone; LightningCLI
        # records it too, a Trainer started from Python does not.
        hparams = checkpoint.get("hyper_parameters")
        if isinstance(hparams, dict):
            hparams.setdefault("_class_path", f"{type(self).__module__}.{type(self).__qualname__}")

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.setdefault("state_dict", {})
        if self.teacher is not None:
            for key, value in self.teacher.state_dict().items():
                state.setdefault(f"teacher.{key}", value)
        if self.teachers is not None:
            for key, value in self.teachers.state_dict().items():
                state.setdefault(f"teachers.{key}", value)
        # Connectors are created by the distillation callbacks in `setup`; when a checkpoint is opened
        # without them (evaluation, export), its connector weights are not needed.
        if not len(self.distill_adapters):
            for key in [k for k in state if k.startswith("distill_adapters.")]:
                del state[key]


def _channels_last_input(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: a 4-D input image batch in the ``channels_last`` memory format (same values, NHWC strides)."""
    if args and isinstance(args[0], Tensor) and args[0].dim() == 4:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return None
