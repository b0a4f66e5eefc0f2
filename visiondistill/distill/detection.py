"""Distillation callbacks for dense detectors: FGD-style FPN imitation, channel-wise FPN distillation, head-logit KD.

They follow the shared protocol (`visiondistill.core.callback`) and read what they need from the networks' outputs,
so they need no hooks: any distillable LightningModule whose student and teacher return a
`visiondistill.models.detectors.DetectorOutput` (FPN ``features``, per-location ``cls_logits``) works, with batches
``(images, targets)`` whose targets hold ``boxes`` (used for the foreground masks of `FeatureImitation`).

Teacher and student must have the same FPN levels at the same strides (checked at setup with a dry forward): their
head locations then correspond one to one and the FPN maps have the same sizes. When the FPN widths differ, a
learned 1×1 connector per level (`HintConnector`, in ``pl_module.distill_adapters``) maps the student's channels to
the teacher's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from typing_extensions import override

from visiondistill.core.callback import DistillationCallback
from visiondistill.core.errors import ConfigError
from visiondistill.core.protocol import ProtocolError, example_inputs, get_student, get_teacher, module_device
from visiondistill.distill import losses
from visiondistill.distill.callbacks import HintConnector, ShapeMismatchError

__all__ = ["DetectionLogitDistillation", "FPNChannelWiseDistillation", "FeatureImitation"]

LevelSpec = Literal["all"] | Sequence[int]


def _features(output: Any, role: str, who: str) -> list[Tensor]:
    features = getattr(output, "features", None)
    if not isinstance(features, list | tuple) or not all(isinstance(f, Tensor) for f in features):
        raise ProtocolError(
            f"{who} needs detector outputs with FPN `features` (visiondistill.models.detectors.DetectorOutput); the "
            f"{role} returned a {type(output).__name__}"
        )
    return list(features)


def _cls_logits(output: Any, role: str, who: str) -> Tensor:
    logits = getattr(output, "cls_logits", None)
    if not isinstance(logits, Tensor):
        raise ProtocolError(
            f"{who} needs detector outputs with per-location `cls_logits` (DetectorOutput); the {role} returned a "
            f"{type(output).__name__}"
        )
    return logits


def _box_targets(batch: Any, who: str) -> list[Tensor]:
    targets = batch[1] if isinstance(batch, list | tuple) and len(batch) > 1 else None
    if not isinstance(targets, list | tuple) or not all(isinstance(t, dict) and "boxes" in t for t in targets):
        raise ProtocolError(f"{who} needs batches (images, targets) with a 'boxes' tensor in every target dict")
    return [t["boxes"] for t in targets]


@torch.no_grad()
def _dry_outputs(trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> tuple[Any, Any]:
    """Student and teacher outputs on two example images, in eval mode (train flags restored)."""
    student, teacher = get_student(pl_module), get_teacher(pl_module, required=True)
    inputs = example_inputs(trainer, pl_module, stage)[:2].to(module_device(student))
    outputs = []
    for model in (student, teacher):
        modes = {module: module.training for module in model.modules()}
        model.eval()
        try:
            outputs.append(model(inputs))
        finally:
            for module, mode in modes.items():
                module.training = mode
    return outputs[0], outputs[1]


class _FPNDistillation(DistillationCallback):
    """Shared machinery: level selection, the setup-time level check and one connector per level."""

    def __init__(self, levels: LevelSpec, weight: float, name: str | None) -> None:
        super().__init__(weight=weight, name=name)
        if levels != "all" and (
            isinstance(levels, str) or not list(levels) or not all(isinstance(i, int) for i in levels)
        ):
            raise ConfigError(
                f"{type(self).__name__}: levels must be 'all' or a non-empty list of indices, got {levels!r}"
            )
        self.levels = "all" if levels == "all" else [int(i) for i in levels]
        self._connectors: nn.ModuleList | None = None
        self._indices: list[int] = []

    @override
    def setup_distillation(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        who = type(self).__name__
        student_out, teacher_out = _dry_outputs(trainer, pl_module, stage)
        s_features, t_features = _features(student_out, "student", who), _features(teacher_out, "teacher", who)
        if len(s_features) != len(t_features):
            raise ShapeMismatchError(
                f"{who}: the student has {len(s_features)} FPN levels and the teacher {len(t_features)}; give both "
                "the same number of backbone out_indices at the same strides"
            )
        count = len(s_features)
        indices = list(range(count)) if self.levels == "all" else self.levels
        for index in indices:
            if not -count <= index < count:
                raise ConfigError(f"{who}: level {index} does not exist; the detectors have levels 0..{count - 1}")
        self._indices = [i % count for i in indices]
        connectors = []
        for index in self._indices:
            s, t = s_features[index], t_features[index]
            if tuple(s.shape[-2:]) != tuple(t.shape[-2:]):
                raise ShapeMismatchError(
                    f"{who}: FPN level {index} is {tuple(s.shape)} in the student and {tuple(t.shape)} in the teacher; "
                    "the levels must have the same strides (same backbone out_indices reductions)"
                )
            connectors.append(HintConnector.for_shapes(tuple(s.shape), tuple(t.shape), index, index))
        self._connectors = self.add_adapter(pl_module, nn.ModuleList(connectors))

    def level_pairs(self, student_out: Any, teacher_out: Any) -> list[tuple[int, Tensor, Tensor]]:
        """``(level, connected student feature, teacher feature)`` for each distilled level."""
        assert self._connectors is not None, "setup() has not run"
        who = type(self).__name__
        s_features, t_features = _features(student_out, "student", who), _features(teacher_out, "teacher", who)
        return [
            (index, connector(s_features[index]), t_features[index].detach())
            for index, connector in zip(self._indices, self._connectors, strict=True)
        ]


class FeatureImitation(_FPNDistillation):
    """FGD-style FPN feature imitation (Yang et al. 2022): foreground and background weighted from the true boxes.

    On each distilled FPN level, ``losses.fgd_feature_loss`` of the connected student feature and the teacher's:
    squared differences weighted by the teacher's spatial and channel attention, with ``alpha`` on the cells inside
    the ground-truth boxes (each box's cells sharing a weight of 1, so small objects count as much as large ones) and
    ``beta`` on the background (sharing 1 per image), plus ``gamma`` times the attention loss. The term is the mean
    over levels.

    Args:
        levels: FPN levels to distil (``"all"`` or indices, fine to coarse).
        alpha: Foreground weight.
        beta: Background weight.
        gamma: Attention-loss weight.
        temperature: Attention temperature.
        mask_extent: How boxes cover feature cells: ``"reference"`` (the FGD authors' code, inclusive extent) or
            ``"tight"`` (only the cells a box touches); see `visiondistill.distill.losses.fgd_masks`.
        weight: Multiplier of the term.
        name: Log name (default ``fgd``).

    Raises:
        ValueError: For bad levels or a non-positive temperature.
        ShapeMismatchError: At setup, when the FPN levels of student and teacher differ in number or size.

    Example::

        >>> FeatureImitation(levels=[0, 1]).levels
        [0, 1]
    """

    default_name = "fgd"

    def __init__(
        self,
        levels: LevelSpec = "all",
        alpha: float = 1.0,
        beta: float = 0.5,
        gamma: float = 0.0,
        temperature: float = 0.5,
        mask_extent: Literal["reference", "tight"] = "reference",
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(levels, weight=weight, name=name)
        if not temperature > 0:
            raise ConfigError(f"FeatureImitation: temperature must be > 0, got {temperature}")
        if mask_extent not in ("reference", "tight"):
            raise ConfigError(f"FeatureImitation: mask_extent must be 'reference' or 'tight', got {mask_extent!r}")
        self.mask_extent = mask_extent
        self.alpha, self.beta, self.gamma, self.temperature = (
            float(alpha),
            float(beta),
            float(gamma),
            float(temperature),
        )

    @override
    def compute_loss(self, pl_module: pl.LightningModule, batch: Any, student_out: Any, teacher_out: Any) -> Tensor:
        boxes = _box_targets(batch, type(self).__name__)
        image_size = tuple(getattr(student_out, "image_size", batch[0].shape[-2:]))
        terms = []
        for _, s, t in self.level_pairs(student_out, teacher_out):
            foreground, background = losses.fgd_masks(boxes, t.shape[-2], t.shape[-1], image_size, self.mask_extent)
            terms.append(
                losses.fgd_feature_loss(
                    s,
                    t,
                    foreground.to(t.device),
                    background.to(t.device),
                    alpha=self.alpha,
                    beta=self.beta,
                    gamma=self.gamma,
                    temperature=self.temperature,
                )
            )
        return torch.stack(terms).mean()


class FPNChannelWiseDistillation(_FPNDistillation):
    """Channel-wise distillation (CWD, Shu et al. 2021) on FPN levels: ``losses.channel_wise_loss`` per level, mean.

    Each channel of a level becomes a distribution over its H·W positions (softmax at ``tau``); the student's level
    first goes through its connector.

    Args:
        levels: FPN levels to distil (``"all"`` or indices).
        tau: Softmax temperature (4 in the paper's detection setting).
        weight: Multiplier of the term.
        name: Log name (default ``cwd_fpn``).

    Raises:
        ValueError: For bad levels or a non-positive ``tau``.
        ShapeMismatchError: At setup, when the FPN levels of student and teacher differ in number or size.

    Example::

        >>> FPNChannelWiseDistillation(tau=4.0).levels
        'all'
    """

    default_name = "cwd_fpn"

    def __init__(self, levels: LevelSpec = "all", tau: float = 4.0, weight: float = 1.0, name: str | None = None):
        super().__init__(levels, weight=weight, name=name)
        if not tau > 0:
            raise ConfigError(f"FPNChannelWiseDistillation: tau must be > 0, got {tau}")
        self.tau = float(tau)

    @override
    def compute_loss(self, pl_module: pl.LightningModule, batch: Any, student_out: Any, teacher_out: Any) -> Tensor:
        pairs = self.level_pairs(student_out, teacher_out)
        return torch.stack([losses.channel_wise_loss(s, t, tau=self.tau) for _, s, t in pairs]).mean()


class DetectionLogitDistillation(DistillationCallback):
    """KD on the classification-head logits at matching locations: a binary KL per class (``losses.binary_kd_loss``).

    FCOS scores each class with a sigmoid, so each (location, class) is a two-way distribution; the term is
    ``T² · Σ_a w_a Σ_k KL(σ(t/T) ‖ σ(s/T)) / Σ_a w_a``. With ``weighting="teacher_score"`` the weight of a location
    is the teacher's highest class probability ``max_k σ(t_ak)``, which keeps the many confident background locations
    from drowning the few objects; ``"uniform"`` is the plain mean.

    Args:
        temperature: ``T`` (> 0).
        weighting: ``"teacher_score"`` or ``"uniform"``.
        weight: Multiplier of the term.
        name: Log name (default ``det_kd``).

    Raises:
        ValueError: For a non-positive temperature or an unknown weighting.
        ShapeMismatchError: At setup or a step, when the logits differ in shape (other strides, levels or classes).

    Example::

        >>> DetectionLogitDistillation(temperature=2.0).weighting
        'teacher_score'
    """

    default_name = "det_kd"
    #: Reads only the teacher's ``cls_logits``, which `visiondistill.distill.cache.TeacherOutputCache` can serve
    #: (FCOS is dense: a location's logits depend on the image alone, not on proposals or on the student).
    cacheable_teacher_output = True

    def __init__(
        self,
        temperature: float = 1.0,
        weighting: Literal["teacher_score", "uniform"] = "teacher_score",
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(weight=weight, name=name)
        if not temperature > 0:
            raise ConfigError(f"DetectionLogitDistillation: temperature must be > 0, got {temperature}")
        if weighting not in ("teacher_score", "uniform"):
            raise ConfigError(
                f"DetectionLogitDistillation: weighting must be 'teacher_score' or 'uniform', got {weighting!r}"
            )
        self.temperature, self.weighting = float(temperature), weighting

    def _pair(self, student_out: Any, teacher_out: Any) -> tuple[Tensor, Tensor]:
        who = type(self).__name__
        s, t = _cls_logits(student_out, "student", who), _cls_logits(teacher_out, "teacher", who)
        if s.shape != t.shape:
            levels = (
                getattr(student_out, "level_shapes", lambda: "?")(),
                getattr(teacher_out, "level_shapes", lambda: "?")(),
            )
            raise ShapeMismatchError(
                f"{who}: student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} differ (N×locations×"
                f"classes; FPN level sizes {levels[0]} and {levels[1]}); give both detectors the same classes and "
                "FPN strides"
            )
        return s, t.detach()

    @override
    def setup_distillation(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._pair(*_dry_outputs(trainer, pl_module, stage))

    @override
    def compute_loss(self, pl_module: pl.LightningModule, batch: Any, student_out: Any, teacher_out: Any) -> Tensor:
        s, t = self._pair(student_out, teacher_out)
        weights = torch.sigmoid(t).amax(dim=-1) if self.weighting == "teacher_score" else None
        return losses.binary_kd_loss(s, t, temperature=self.temperature, weights=weights)
