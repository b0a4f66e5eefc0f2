"""One student for several tasks: a shared timm backbone with a classification head and a segmentation head.

Each head is distilled from its own teacher: the teachers are listed with the head they teach, and a distillation
callback that names a teacher (``teacher: <id>``) reads that teacher's head of the student (docs/multitask.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassJaccardIndex
from typing_extensions import override

from visiondistill.core.adapters.segmentation import SegmentationSaliencyAdapter
from visiondistill.core.callback import distillation_callbacks
from visiondistill.core.errors import ConfigError
from visiondistill.core.protocol import batch_inputs, freeze_teacher
from visiondistill.core.saliency import ClassificationSaliencyAdapter, SaliencyAdapter
from visiondistill.core.teachers import parse_teacher_entries
from visiondistill.models.classifiers import ClassifierSpec, create_classifier
from visiondistill.models.segmenters import SegmenterSpec, create_segmenter
from visiondistill.tasks.base import DistillationTask, OptimizerName, SchedulerName, _channels_last_input

#: The heads of the student: the kind of network that teaches each, and the factory that builds its teacher.
HEADS: dict[str, tuple[type, Any]] = {
    "cls": (ClassifierSpec, create_classifier),
    "seg": (SegmenterSpec, create_segmenter),
}
#: The batch key of each head's targets.
HEAD_TARGETS = {"cls": "label", "seg": "mask"}
#: Each head's headline test metric, logged as ``<stage>/<head>/<metric>``.
HEAD_METRICS = {"cls": "acc_top1", "seg": "miou"}


class MultiTaskNet(nn.Module):
    """A timm backbone (``features_only``) shared by a classification head and a light segmentation decoder.

    The classification head pools the deepest stage and applies a linear layer; the decoder projects every stage
    to ``decoder_channels`` with a 1×1 convolution, upsamples them to the finest stage and sums them (an FPN-like
    top-down sum without lateral refinement), then a 3×3 convolution, BatchNorm, ReLU and a 1×1 classifier, upsampled
    to the input size. ``forward`` returns ``{"cls": N×C, "seg": N×K×H×W}``. ``feature_info`` lists the backbone's
    stages (module paths in this network), so stage indices (``-1``) name backbone stages.

    Example::

        >>> import torch
        >>> net = MultiTaskNet("test_resnet", num_classes=6, num_seg_classes=7)
        >>> {k: tuple(v.shape) for k, v in net.eval()(torch.zeros(1, 3, 32, 32)).items()}
        {'cls': (1, 6), 'seg': (1, 7, 32, 32)}
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        num_seg_classes: int,
        in_channels: int = 3,
        pretrained: bool = False,
        decoder_channels: int = 32,
        backbone_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = timm.create_model(
            backbone, features_only=True, pretrained=pretrained, in_chans=in_channels, **dict(backbone_kwargs or {})
        )
        channels = self.backbone.feature_info.channels()
        # The backbone's stages, by module path in this network, as segmenters and detectors declare theirs: feature
        # and explanation callbacks address stages by index (-1: the deepest backbone stage, which both heads read).
        self.feature_info = [
            {**stage, "module": _stage_path(self.backbone, stage["module"])}
            for stage in self.backbone.feature_info.get_dicts()
        ]
        self.classifier = nn.Linear(channels[-1], num_classes)
        self.lateral = nn.ModuleList(nn.Conv2d(c, decoder_channels, kernel_size=1) for c in channels)
        self.decoder = nn.Sequential(
            nn.Conv2d(decoder_channels, decoder_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(decoder_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(decoder_channels, num_seg_classes, kernel_size=1),
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """The logits of every head, by head name."""
        features = self.backbone(x)
        logits = self.classifier(features[-1].mean(dim=(2, 3)))
        size = features[0].shape[-2:]
        fused = sum(
            F.interpolate(lateral(f), size=size, mode="bilinear", align_corners=False)
            for lateral, f in zip(self.lateral, features, strict=True)
        )
        seg = F.interpolate(self.decoder(fused), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"cls": logits, "seg": seg}


class MultiTaskModule(DistillationTask):
    """A multi-task student (classification + segmentation) with one teacher per head.

    The task loss is ``Σ_head task_weights[head] · CE(head)`` (cross-entropy on the image's class and on every
    pixel); validation and test log ``<stage>/cls/loss``, ``<stage>/cls/acc_top1``, ``<stage>/seg/loss``,
    ``<stage>/seg/miou``, ``<stage>/seg/dice`` and the weighted ``<stage>/loss``. Batches are dicts
    ``{"image", "label", "mask"}`` (`visiondistill.data.ShapesMultiTask`).

    Teachers are listed with the head they teach: ``teachers: [{id: cls_t, head: cls, name: resnet18, checkpoint:
    …}, {id: seg_t, head: seg, arch: Unet, encoder_name: resnet18, checkpoint: …}]`` (a ``cls`` teacher's other keys
    are a `ClassifierSpec`'s, a ``seg`` teacher's a `SegmenterSpec`'s). Every distillation callback names its
    teacher (``teacher: <id>``) and reads that teacher's output and that teacher's head of the student
    (``teacher_heads``, read by `visiondistill.core.teachers.head_output`).

    Args:
        backbone: timm model name of the shared backbone (built with ``features_only=True``).
        num_classes: Classes of the classification head.
        num_seg_classes: Classes of the segmentation head, background included.
        class_names: Names of the classification classes (default: from the datamodule's ``head_classes["cls"]``).
        seg_class_names: Names of the segmentation classes (default: the datamodule's ``head_classes["seg"]``).
        teachers: One teacher per head to distil (or none): model specs with ``id``, ``head`` and optional
            ``weight``. A head may go without a teacher.
        task_weights: Weight of each head's task loss, by head name (default 1 each).
        in_channels: Input channels of the student (and of every teacher).
        pretrained: Load timm's pretrained backbone weights (needs them cached locally).
        decoder_channels: Width of the segmentation decoder.
        backbone_kwargs: Extra arguments of the timm backbone (e.g. ``{channels: [32, 64, 128, 256]}`` for a
            narrower timm ResNet), as for ``timm.create_model``.
        optimizer: ``"adamw"`` or ``"sgd"``, as in `DistillationTask`.
        lr: Peak learning rate.
        weight_decay: Weight decay.
        warmup_epochs: Linear warm-up length, in epochs.
        scheduler: ``"cosine"`` or ``"constant"``.
        channels_last: Keep student, teachers and inputs in the ``channels_last`` memory format (docs/speed.md).
        compile: Compile student and teachers in place with ``torch.compile``.
        **recorded: Keys that come back from a checkpoint's hyper-parameters (``student``, ``teacher``,
            ``_class_path``); a recorded ``student`` mapping sets ``backbone``, ``in_channels`` and ``pretrained``.

    Raises:
        ConfigError: For an unknown head (in ``teachers`` or ``task_weights``), two teachers of one head, a teacher
            with other input channels or other classes than its head, or bad class counts.

    Example::

        >>> import torch
        >>> module = MultiTaskModule(backbone="test_resnet", num_classes=6, num_seg_classes=7)
        >>> sorted(module.eval()(torch.zeros(1, 3, 32, 32)))
        ['cls', 'seg']
    """

    #: The student's output heads: its metrics are logged per head (``<stage>/<head>/<metric>``).
    heads: tuple[str, ...] = tuple(HEADS)
    #: The saliency adapter of each head (`visiondistill.explain.heads`: ``GradCAMCallback(head=…)``).
    saliency_heads: ClassVar[dict[str, type[SaliencyAdapter]]] = {
        "cls": ClassificationSaliencyAdapter,
        "seg": SegmentationSaliencyAdapter,
    }

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 6,
        num_seg_classes: int = 7,
        class_names: Sequence[str] | None = None,
        seg_class_names: Sequence[str] | None = None,
        teachers: list[dict[str, Any]] | None = None,
        task_weights: Mapping[str, float] | None = None,
        in_channels: int = 3,
        pretrained: bool = False,
        decoder_channels: int = 32,
        backbone_kwargs: Mapping[str, Any] | None = None,
        optimizer: OptimizerName = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 1.0,
        scheduler: SchedulerName = "cosine",
        channels_last: bool = False,
        compile: bool = False,
        **recorded: Any,
    ) -> None:
        # Recorded explicitly: Lightning's frame inspection needs `super().__init__`, which this class skips (below).
        arguments = {key: value for key, value in locals().items() if key not in ("self", "recorded", "__class__")}
        if num_classes < 2 or num_seg_classes < 2:
            raise ConfigError(
                f"num_classes and num_seg_classes must be >= 2, got num_classes={num_classes}, "
                f"num_seg_classes={num_seg_classes}"
            )
        weights = {head: 1.0 for head in HEADS}
        for head, weight in (task_weights or {}).items():
            _check_head(head, "task_weights")
            if not float(weight) >= 0:
                raise ConfigError(f"task_weights.{head} must be a number >= 0, got {weight!r}")
            weights[head] = float(weight)
        entries = parse_teacher_entries(teachers) if teachers is not None else []
        teacher_specs, heads = _head_teacher_specs(entries, in_channels)
        # `visiondistill.reporting.loader.load_task_module` hands the recorded student back (without own weights).
        backbone, in_channels, pretrained = _recorded_student(
            recorded.get("student"), backbone, in_channels, pretrained
        )
        # DistillationTask.__init__ builds one kind of network for student and teachers; here they differ in kind, so
        # this module builds them itself and sets the same attributes the base class's methods read.
        pl.LightningModule.__init__(self)
        student = {"backbone": backbone, "in_channels": in_channels, "pretrained": pretrained}
        self.save_hyperparameters(arguments | student)
        # The student as the report, the export and `load_task_module` read it (``hparams["student"]``).
        self.hparams["student"] = student
        self.hparams["teacher"] = None
        self.student = MultiTaskNet(
            backbone, num_classes, num_seg_classes, in_channels, pretrained, decoder_channels, backbone_kwargs
        )
        self.num_classes, self.num_seg_classes = num_classes, num_seg_classes
        built = {tid: self._build_teacher(tid, spec, heads[tid]) for tid, spec in teacher_specs.items()}
        self.teachers = nn.ModuleDict(built) if built else None
        self.teacher = next(iter(self.teachers.values())) if self.teachers is not None else None
        self.teacher_weights = {teacher_id: weight for teacher_id, weight, _ in entries}
        #: Teacher id -> the student head it teaches (`visiondistill.core.teachers.head_output`).
        self.teacher_heads = heads
        self.teacher_outputs: dict[str, Any] = {}
        for network in self.teachers.values() if self.teachers is not None else []:
            freeze_teacher(network)
        self.distill_adapters = nn.ModuleDict()
        self.optimizer_name, self.lr, self.weight_decay = optimizer, lr, weight_decay
        self.warmup_epochs, self.scheduler_name = warmup_epochs, scheduler
        self.channels_last, self.compile_networks = bool(channels_last), bool(compile)
        for network in (self.student, *(self.teachers.values() if self.teachers is not None else [])):
            if self.channels_last:  # as DistillationTask does
                network.to(memory_format=torch.channels_last)
                network.register_forward_pre_hook(_channels_last_input)
            if self.compile_networks:
                network.compile()
        self.student_spec = self.teacher_spec = None
        self.task_weights = weights
        self.class_names = list(class_names) if class_names is not None else None
        self.seg_class_names = list(seg_class_names) if seg_class_names is not None else None
        self.in_channels = in_channels
        for stage in ("val", "test"):
            setattr(self, f"{stage}_acc", self.head_metric("cls"))
            setattr(self, f"{stage}_iou", self.head_metric("seg"))
            setattr(self, f"{stage}_dice", MulticlassF1Score(num_seg_classes, average=None))

    @override
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        head_classes = getattr(datamodule, "head_classes", None) or {}
        expected = (("cls", self.num_classes, "num_classes"), ("seg", self.num_seg_classes, "num_seg_classes"))
        for head, count, arg in expected:
            names = head_classes.get(head)
            if names is not None and len(names) != count:
                raise ConfigError(
                    f"the data's {head} head has {len(names)} classes but the model is built for {count}; "
                    f"set model.init_args.{arg}: {len(names)}"
                )
        data_channels = getattr(datamodule, "in_channels", None)
        if data_channels is not None and data_channels != self.in_channels:
            raise ConfigError(
                f"the data has {data_channels} channels but the student takes {self.in_channels}; set "
                "model.init_args.in_channels to the data's"
            )
        self.class_names = self.class_names or head_classes.get("cls") or [str(i) for i in range(self.num_classes)]
        seg_names = head_classes.get("seg") or [str(i) for i in range(self.num_seg_classes)]
        self.seg_class_names = self.seg_class_names or seg_names
        if self._trainer is not None:
            for callback in distillation_callbacks(self.trainer):
                if self.teachers is not None and callback.teacher_id is None:
                    pairs = ", ".join(f"{tid} -> {head}" for tid, head in self.teacher_heads.items())
                    raise ConfigError(
                        f"{type(callback).__name__} ({callback.name}) names no teacher; on a multi-task module every "
                        f"distillation term names the teacher of the head it distils with `teacher: <id>` ({pairs})"
                    )

    # -- teachers and heads, as the report, the benchmark and the explanation callbacks read them -------------

    def _build_teacher(self, teacher_id: str, spec: Any, head: str) -> nn.Module:
        classes = self.num_classes if head == "cls" else self.num_seg_classes
        return HEADS[head][1](spec, classes, f"teachers.{teacher_id}")

    def build_teachers(self, teachers: Sequence[Mapping[str, Any]]) -> dict[str, nn.Module]:
        """The networks of ``teachers`` entries (as the ``teachers`` argument: ``id``, ``head``, spec fields), by id.

        Built as this module builds its own (weights from their checkpoints), in eval mode; each teaches the head
        its entry names (``teacher_heads`` of a module built with these entries). Used by the report, which
        rebuilds a run's teachers from its recorded hyper-parameters.

        Raises:
            ConfigError: For an entry the module itself would refuse.
            CheckpointError: For a teacher checkpoint that is missing or does not fit.
        """
        specs, heads = _head_teacher_specs(parse_teacher_entries(list(teachers)), self.in_channels)
        return {tid: self._build_teacher(tid, spec, heads[tid]).eval() for tid, spec in specs.items()}

    def head_metric(self, head: str) -> Metric:
        """A fresh metric of a head, the one its headline test metric (`HEAD_METRICS`) is computed with.

        ``cls``: top-1 accuracy over images; ``seg``: the IoU of each class (its mean is ``miou``).
        """
        _check_head(head, "head")
        if head == "cls":
            return MulticlassAccuracy(self.num_classes, average="micro")
        return MulticlassJaccardIndex(self.num_seg_classes, average=None)

    @torch.no_grad()
    def score_heads(self, networks: Mapping[str, nn.Module], loader: Iterable[Any]) -> dict[str, float]:
        """Each head's headline metric (`HEAD_METRICS`) of the networks predicting it, over a loader's batches.

        Args:
            networks: By head name, the network whose output is that head's logits (a single-task teacher), or a
                multi-head network (its output dict is read at the head): any mix, e.g. the teachers, or the student
                for every head.
            loader: Batches ``{"image", "label", "mask"}`` (a test loader of `visiondistill.data.ShapesMultiTask`).

        Returns:
            ``{"test/<head>/<metric>": value}`` for each head in ``networks``: the same numbers the module's own test
            loop logs for its student.
        """
        metrics = {head: self.head_metric(head) for head in networks}
        for network in networks.values():
            network.eval()
        for batch in loader:
            for head, network in networks.items():
                out = network(batch["image"])
                logits = out[head] if isinstance(out, Mapping) else out
                metrics[head].update(logits.argmax(dim=1), batch[HEAD_TARGETS[head]].long())
        return {f"test/{head}/{HEAD_METRICS[head]}": float(metric.compute().mean()) for head, metric in metrics.items()}

    def head_class_names(self, head: str) -> list[str] | None:
        """The names of a head's classes (known after ``setup``, or when given)."""
        _check_head(head, "head")
        return self.class_names if head == "cls" else self.seg_class_names

    def head_batch(self, batch: Mapping[str, Any], head: str) -> dict[str, Any]:
        """A batch as one head's single-task view: ``image``, that head's targets as ``target``, and the ``mask``.

        The explanation callbacks hand it to the head's saliency adapter (`saliency_heads`), which reads
        ``target`` as a single-task batch's targets (and ``mask`` for the pointing game).
        """
        _check_head(head, "head")
        view = {"image": batch["image"], "target": batch[HEAD_TARGETS[head]]}
        return view | ({"mask": batch["mask"]} if "mask" in batch else {})

    # -- losses and metrics ---------------------------------------------------------------------

    def head_losses(self, student_out: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The unweighted task loss of each head: cross-entropy on the class, and on every pixel of the mask."""
        return {
            "cls": F.cross_entropy(student_out["cls"], batch["label"].long()),
            "seg": F.cross_entropy(student_out["seg"], batch["mask"].long()),
        }

    @override
    def task_loss(self, student_out: Any, batch: Any) -> Tensor:
        losses = self.head_losses(student_out, batch)
        size = batch["label"].shape[0]
        for head, value in losses.items():
            self.log(f"train/{head}/loss", value.detach(), on_step=False, on_epoch=True, batch_size=size)
        return sum(self.task_weights[head] * value for head, value in losses.items())

    @override
    def evaluate_batch(self, batch: Any, stage: str) -> Tensor:
        images = batch["image"]
        out = self.student(images)
        losses = self.head_losses(out, batch)
        size = images.shape[0]
        getattr(self, f"{stage}_acc").update(out["cls"].argmax(dim=1), batch["label"].long())
        predictions, masks = out["seg"].argmax(dim=1), batch["mask"].long()
        getattr(self, f"{stage}_iou").update(predictions, masks)
        getattr(self, f"{stage}_dice").update(predictions, masks)
        for head, value in losses.items():
            self.log(f"{stage}/{head}/loss", value, sync_dist=True, batch_size=size)
        loss = sum(self.task_weights[head] * value for head, value in losses.items())
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True, batch_size=size)
        return loss

    @override
    def log_epoch_metrics(self, stage: str) -> None:
        acc, iou, dice = (getattr(self, f"{stage}_{name}") for name in ("acc", "iou", "dice"))
        self.log(f"{stage}/cls/acc_top1", acc.compute(), prog_bar=stage == "val")
        per_class = iou.compute()
        self.log(f"{stage}/seg/miou", per_class.mean(), prog_bar=stage == "val")
        self.log(f"{stage}/seg/dice", dice.compute().mean())
        for name, value in zip(self.seg_class_names or [], per_class, strict=False):
            self.log(f"{stage}/seg/iou/{name}", value)
        for metric in (acc, iou, dice):
            metric.reset()

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        images = batch_inputs(batch)
        out = self.student(images)
        probabilities = out["cls"].softmax(dim=1)
        confidence, prediction = probabilities.max(dim=1)
        return {"class": prediction, "class_confidence": confidence, "mask": out["seg"].argmax(dim=1)}


def _stage_path(backbone: nn.Module, module: str) -> str:
    """The path in `MultiTaskNet` of a backbone stage (timm's feature wrappers may join nested names with ``_``)."""
    for candidate in (module, module.replace(".", "_")):
        try:
            backbone.get_submodule(candidate)
        except AttributeError:
            continue
        return f"backbone.{candidate}"
    return f"backbone.{module}"


def _recorded_student(recorded: Any, backbone: str, in_channels: int, pretrained: bool) -> tuple[str, int, bool]:
    """Backbone, channels and ``pretrained`` from a recorded ``student`` mapping (a checkpoint's), else as given."""
    if not isinstance(recorded, Mapping):
        return backbone, in_channels, pretrained
    return (
        str(recorded.get("backbone", backbone)),
        int(recorded.get("in_channels", in_channels)),
        bool(recorded.get("pretrained", pretrained)),
    )


def _head_teacher_specs(
    entries: Sequence[tuple[str, float, dict[str, Any]]], in_channels: int
) -> tuple[dict[str, Any], dict[str, str]]:
    """The spec of each teacher entry and the head it teaches, both by id, checked (one teacher per head)."""
    specs: dict[str, Any] = {}
    heads: dict[str, str] = {}
    for teacher_id, _, entry in entries:
        fields = dict(entry)
        head = fields.pop("head", None)
        _check_head(head, f"teachers.{teacher_id}.head")
        if head in heads.values():
            raise ConfigError(f"teachers.{teacher_id}: head {head!r} already has a teacher; give each head one")
        spec = HEADS[head][0].coerce(fields, role=f"teachers.{teacher_id}")
        if spec.in_channels != in_channels:
            raise ConfigError(
                f"teachers.{teacher_id} takes {spec.in_channels} input channels but the student takes "
                f"{in_channels}; they see the same images, so set the same in_channels"
            )
        specs[teacher_id], heads[teacher_id] = spec, head
    return specs, heads


def _check_head(head: Any, key: str) -> None:
    if head not in HEADS:
        raise ConfigError(f"{key}: unknown head {head!r}; the multi-task student's heads are {sorted(HEADS)}")
