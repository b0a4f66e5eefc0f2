"""Distillation callbacks for dense prediction: pixel-wise KD, channel-wise distillation and pair-wise similarity.

They follow the shared protocol (`visiondistill.core.callback`) and so work on any distillable LightningModule whose
student and teacher output ``N×K×H×W`` logits; the feature-stage variants address layers as every feature callback
does (module paths or stage indices, e.g. ``-1`` = the deepest encoder stage of an smp model built by
`visiondistill.models.create_segmenter`). `AttentionTransfer` and `FeatureHint` work on the same stages unchanged.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import pytorch_lightning as pl
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from visiondistill.core.callback import DistillationCallback
from visiondistill.core.errors import ConfigError
from visiondistill.core.protocol import ProtocolError, batch_targets, output_logits
from visiondistill.core.recorder import LayerSpec
from visiondistill.distill import losses
from visiondistill.distill.callbacks import (
    HintConnector,
    ShapeMismatchError,
    _check_logits,
    _FeatureDistillation,
    teacher_logits,
)

__all__ = ["ChannelWiseDistillation", "PairwiseSimilarity", "PixelwiseDistillation"]


def _ignore_mask(pl_module: pl.LightningModule, batch: Any, logits: Tensor) -> Tensor | None:
    """``True`` on the batch's ``ignore_index`` pixels, when the module declares one and the batch has masks."""
    ignore_index = getattr(pl_module, "ignore_index", None)
    if ignore_index is None:
        return None
    try:
        masks = batch_targets(batch)
    except ProtocolError:
        return None
    n, _, h, w = logits.shape
    if masks.shape != (n, h, w):
        return None
    return masks == ignore_index


class PixelwiseDistillation(DistillationCallback):
    """Pixel-wise knowledge distillation (Liu et al. 2019, SKD): per-pixel KL of class distributions at ``T``.

    ``T² · mean over pixels of KL(softmax(t/T) ‖ softmax(s/T))`` (`losses.pixelwise_kd_loss`); pixels whose mask
    value is the module's ``ignore_index`` are left out of the mean.

    With ``class_weights`` the mean is weighted: each pixel counts with the weight of the class the teacher predicts
    there (``Σ w·KL / Σ w``). The teacher's prediction rather than the label, so that unlabeled images
    (docs/unlabeled.md) are weighted too. This is for data where one class (background) covers almost every pixel:
    unweighted, the term is then mostly about background, while the task loss may weight the rare classes up.

    Args:
        temperature: Softmax temperature ``T`` (> 0); 1 in the paper.
        weight: Multiplier of the term.
        name: Log name (default ``pixelwise_kd``).
        class_weights: One weight (>= 0, not all 0) per class, or ``None`` for the plain mean.
        teacher: With several teachers (docs/teachers.md): the id of the one teacher this term reads; ``None``
            (default): their weighted ensemble, per pixel ``Σ w_i softmax(t_i/T) / Σ w_i``
            (`visiondistill.core.teachers.ensemble_logits`). With one teacher, leave it out.

    Raises:
        ValueError: When ``temperature`` is not positive, or ``class_weights`` has a negative or non-finite entry
            (here), or not one entry per class (first step).
        ShapeMismatchError: At a training step, when student and teacher logits differ in shape.

    Example::

        >>> PixelwiseDistillation(temperature=2.0).name
        'pixelwise_kd'
    """

    default_name = "pixelwise_kd"
    #: Reads only the teacher's logits, which `visiondistill.distill.cache.TeacherOutputCache` can serve.
    cacheable_teacher_output = True

    def __init__(
        self,
        temperature: float = 1.0,
        weight: float = 1.0,
        name: str | None = None,
        class_weights: list[float] | None = None,
        teacher: str | None = None,
    ) -> None:
        super().__init__(weight=weight, name=name)
        self.teacher_id = teacher
        if not temperature > 0:
            raise ConfigError(f"PixelwiseDistillation: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        if class_weights is not None:
            class_weights = [float(value) for value in class_weights]
            valid = all(math.isfinite(v) and v >= 0 for v in class_weights)
            if not class_weights or not valid or not any(class_weights):
                raise ConfigError(
                    f"PixelwiseDistillation: class_weights must be finite numbers >= 0, not all 0, got {class_weights}"
                )
        self.class_weights = class_weights

    @override
    def compute_loss(self, pl_module: pl.LightningModule, batch: Any, student_out: Any, teacher_out: Any) -> Tensor:
        student = output_logits(student_out)
        teacher = teacher_logits(self, pl_module, student, teacher_out, None, self.temperature)
        ignore = _ignore_mask(pl_module, batch, student)
        weights = None
        if self.class_weights is not None:
            if len(self.class_weights) != teacher.shape[1]:
                raise ConfigError(
                    f"{self.name}: class_weights has {len(self.class_weights)} entries but the logits have "
                    f"{teacher.shape[1]} classes; give one weight per class"
                )
            weights = teacher.new_tensor(self.class_weights)[teacher.argmax(dim=1)]
        return losses.pixelwise_kd_loss(
            student, teacher, temperature=self.temperature, ignore_mask=ignore, pixel_weights=weights
        )


class ChannelWiseDistillation(_FeatureDistillation):
    """Channel-wise distillation (CWD, Shu et al. 2021) on the logits or on a feature stage.

    Each channel becomes a distribution over its H·W positions (softmax at ``tau``); the term is
    ``tau² · Σ KL(teacher ‖ student) / (N·C)`` (`losses.channel_wise_loss`). On a feature stage the student's map
    first goes through a learned connector to the teacher's channels and size (1×1 convolution and BatchNorm, as
    in the paper; created in ``setup``, stored in ``pl_module.distill_adapters``).

    Args:
        source: ``"logits"`` (the networks' outputs) or ``"features"`` (the layers below).
        student_layer: Student module path or stage index, with ``source="features"``.
        teacher_layer: Teacher module path or stage index, with ``source="features"``.
        tau: Softmax temperature (1 for segmentation in the paper).
        weight: Multiplier of the term (3 in the paper's segmentation setting).
        name: Log name (default ``cwd``).
        teacher: With several teachers (docs/teachers.md): the id of the teacher whose logits or layer are read;
            ``None``: the first.

    Raises:
        ValueError: For an unknown ``source`` or a non-positive ``tau``.
        LayerNotFoundError: At setup, for a layer the model does not have.
        ShapeMismatchError: At setup, for feature maps whose sizes no connector reconciles; at a step, for logits
            of different shapes.

    Example::

        >>> ChannelWiseDistillation(source="features", student_layer=-1, teacher_layer=-1).student_layers
        [-1]
        >>> ChannelWiseDistillation().student_layers
        []
    """

    default_name = "cwd"

    def __init__(
        self,
        source: Literal["logits", "features"] = "logits",
        student_layer: LayerSpec = -1,
        teacher_layer: LayerSpec = -1,
        tau: float = 1.0,
        weight: float = 3.0,
        name: str | None = None,
        teacher: str | None = None,
    ) -> None:
        if source not in ("logits", "features"):
            raise ConfigError(f"ChannelWiseDistillation: source must be 'logits' or 'features', got {source!r}")
        if not tau > 0:
            raise ConfigError(f"ChannelWiseDistillation: tau must be > 0, got {tau}")
        if source == "features":
            super().__init__([student_layer], [teacher_layer], weight=weight, name=name, teacher=teacher)
        else:  # no hooks: the logits come with the step
            DistillationCallback.__init__(self, weight=weight, name=name)
            self.teacher_id = teacher
            self.student_layers, self.teacher_layers = [], []
            self._student_recorder = self._teacher_recorder = None
        self.source = source
        #: On the logits it reads only the teacher's output, which `TeacherOutputCache` can serve.
        self.cacheable_teacher_output = source == "logits"
        self.tau = float(tau)
        self._connector: nn.Module | None = None

    @override
    def setup_distillation(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.source == "features":
            super().setup_distillation(trainer, pl_module, stage)

    @override
    def check_pair(
        self, pl_module: pl.LightningModule, student_layer: LayerSpec, teacher_layer: LayerSpec, s: Tensor, t: Tensor
    ) -> None:
        try:
            connector = HintConnector.for_shapes(tuple(s.shape), tuple(t.shape), student_layer, teacher_layer)
        except ShapeMismatchError as error:
            raise ShapeMismatchError(str(error).replace("FeatureHint", "ChannelWiseDistillation")) from None
        self._connector = self.add_adapter(pl_module, connector)

    @override
    def compute_loss(self, pl_module: pl.LightningModule, batch: Any, student_out: Any, teacher_out: Any) -> Tensor:
        if self.source == "logits":
            student, teacher = output_logits(student_out), output_logits(self.teacher_output(pl_module, teacher_out))
            _check_logits(student, teacher, self.name)
            return losses.channel_wise_loss(student, teacher, tau=self.tau)
        assert self._connector is not None, "setup() has not run"
        ((s, t),) = self.recorded_pairs()
        return losses.channel_wise_loss(self._connector(s), t, tau=self.tau)


class PairwiseSimilarity(_FeatureDistillation):
    """Pair-wise similarity distillation (SKD, Liu et al. 2019) on one feature stage.

    ``a_ij = cos(f_i, f_j)`` between the feature vectors of every pair of spatial positions, for student and teacher;
    the term is ``Σ (a^s_ij − a^t_ij)² / (HW)²``, batch mean (`losses.pairwise_similarity_loss`). Channel counts may
    differ. The features are first max-pooled (adaptively, as SKD pools patches into nodes) to a common grid of at
    most ``pool_size × pool_size`` nodes, which bounds the ``(HW)²`` similarity matrices; without ``pool_size``, maps
    of different sizes are pooled to the smaller one.

    Args:
        student_layer: Student module path or stage index (``-1`` = deepest stage).
        teacher_layer: Teacher module path or stage index.
        pool_size: Largest node grid side; ``None`` keeps the full resolution (memory grows as ``(H·W)²``).
        weight: Multiplier of the term.
        name: Log name (default ``pairwise``).
        teacher: With several teachers: the id of the teacher whose layer is read; ``None``: the first.

    Raises:
        ValueError: For a ``pool_size`` below 1.
        LayerNotFoundError: At setup, for a layer the model does not have.

    Example::

        >>> PairwiseSimilarity(student_layer="decoder", teacher_layer="decoder", pool_size=8).pool_size
        8
    """

    default_name = "pairwise"

    def __init__(
        self,
        student_layer: LayerSpec = -1,
        teacher_layer: LayerSpec = -1,
        pool_size: int | None = 16,
        weight: float = 1.0,
        name: str | None = None,
        teacher: str | None = None,
    ) -> None:
        super().__init__([student_layer], [teacher_layer], weight=weight, name=name, teacher=teacher)
        if pool_size is not None and (isinstance(pool_size, bool) or int(pool_size) < 1):
            raise ConfigError(f"PairwiseSimilarity: pool_size must be >= 1 or None, got {pool_size!r}")
        self.pool_size = int(pool_size) if pool_size is not None else None

    def grid(self, s: Tensor, t: Tensor) -> tuple[int, int]:
        """The node grid both feature maps are pooled to."""
        height, width = min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1])
        if self.pool_size is not None:
            height, width = min(height, self.pool_size), min(width, self.pool_size)
        return height, width

    def _pool(self, feature: Tensor, grid: tuple[int, int]) -> Tensor:
        return feature if tuple(feature.shape[-2:]) == grid else F.adaptive_max_pool2d(feature, grid)

    @override
    def compute_loss(self, pl_module: pl.LightningModule, batch: Any, student_out: Any, teacher_out: Any) -> Tensor:
        ((s, t),) = self.recorded_pairs()
        grid = self.grid(s, t)
        return losses.pairwise_similarity_loss(self._pool(s, grid), self._pool(t, grid))
