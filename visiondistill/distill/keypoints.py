"""Distillation for heatmap keypoint models: FPD's heatmap distillation.

`AttentionTransfer` and `FeatureHint` work unchanged on the backbone stages of a keypoint model built by
`visiondistill.models.create_keypoint_model` (stage indices resolve through its ``feature_info``; ``-1`` = the deepest
backbone stage) or on the head by module path (``"head"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from torch import Tensor
from typing_extensions import override

from visiondistill.core.callback import DistillationCallback
from visiondistill.core.errors import ConfigError
from visiondistill.core.protocol import ProtocolError, output_logits
from visiondistill.distill import losses
from visiondistill.distill.callbacks import ShapeMismatchError

__all__ = ["HeatmapDistillation", "batch_heatmap_targets"]


def batch_heatmap_targets(batch: Any) -> tuple[Tensor | None, Tensor | None]:
    """The target heatmaps ``N×K×h×w`` and keypoint weights ``N×K`` of a batch, where it has them.

    Dict batches (`visiondistill.data.KeypointCrops`) hold them as ``target`` (or ``heatmaps``) and ``target_weight``
    (or ``weights``); tuple batches as ``(images, heatmaps[, weights])``.
    """
    if isinstance(batch, Mapping):
        heatmaps = next((batch[k] for k in ("target", "heatmaps") if isinstance(batch.get(k), Tensor)), None)
        weights = next((batch[k] for k in ("target_weight", "weights") if isinstance(batch.get(k), Tensor)), None)
        return heatmaps, weights
    if isinstance(batch, list | tuple) and len(batch) > 1 and isinstance(batch[1], Tensor) and batch[1].ndim == 4:
        weights = batch[2] if len(batch) > 2 and isinstance(batch[2], Tensor) and batch[2].ndim == 2 else None
        return batch[1], weights
    return None, None


class HeatmapDistillation(DistillationCallback):
    """Heatmap distillation (FPD, Zhang et al. 2019): ``(1−α)·MSE(H_s, H_gt) + α·MSE(H_s, H_t)``, visibility-weighted.

    Each squared error of keypoint ``k`` of image ``n`` is multiplied by the batch's ``target_weight[n, k]`` (0 for
    keypoints that are not labelled), as `losses.heatmap_kd_loss` defines. The task module still adds its own
    supervised MSE; set its ``task_weight`` to 0 for FPD's loss exactly, or keep it and set ``alpha=1`` to add a pure
    teacher term.

    Args:
        alpha: Weight ``α`` of the teacher term, in [0, 1] (0.5 in the paper).
        use_ground_truth: Include the ``(1−α)·MSE(H_s, H_gt)`` term; without it the term is ``MSE(H_s, H_t)``.
        use_weights: Weight by keypoint visibility (the batch's ``target_weight``).
        weight: Multiplier of the term.
        name: Log name (default ``heatmap_kd``).

    Raises:
        ValueError: For ``alpha`` outside [0, 1].
        ShapeMismatchError: At a training step, when student and teacher heatmaps differ in shape.
        ProtocolError: At a training step, when ground truth or weights are asked for and the batch has none.

    Example::

        >>> HeatmapDistillation(alpha=0.5).name
        'heatmap_kd'
    """

    default_name = "heatmap_kd"

    def __init__(
        self,
        alpha: float = 0.5,
        use_ground_truth: bool = True,
        use_weights: bool = True,
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(weight=weight, name=name)
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"HeatmapDistillation: alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.use_ground_truth = bool(use_ground_truth)
        self.use_weights = bool(use_weights)

    @override
    def compute_loss(self, pl_module: pl.LightningModule, batch: Any, student_out: Any, teacher_out: Any) -> Tensor:
        student, teacher = output_logits(student_out), output_logits(teacher_out)
        if student.shape != teacher.shape:
            raise ShapeMismatchError(
                f"{self.name}: student heatmaps {tuple(student.shape)} and teacher heatmaps {tuple(teacher.shape)} "
                "differ; teacher and student must predict the same keypoints at the same stride"
            )
        target, weights = batch_heatmap_targets(batch)
        needs = [
            n
            for n, v, on in (("target heatmaps", target, self.use_ground_truth), ("weights", weights, self.use_weights))
            if on and v is None
        ]
        if needs:
            raise ProtocolError(
                f"{self.name}: the batch has no {' and no '.join(needs)}; give batches with 'target' and "
                "'target_weight' (visiondistill.data.KeypointCrops), or set use_ground_truth/use_weights to false"
            )
        return losses.heatmap_kd_loss(
            student,
            teacher,
            target if self.use_ground_truth else None,
            alpha=self.alpha if self.use_ground_truth else 1.0,
            weights=weights if self.use_weights else None,
        )
