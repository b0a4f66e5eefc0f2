"""The distillation callback stack.

A LightningModule is distillable when it has ``student`` and ``teacher`` attributes and adds
`distillation_loss` to its task loss in ``training_step``; every `DistillationCallback` on the trainer
then contributes one weighted, logged term.
"""

from visiondistill.distill.base import DistillationCallback, distillation_callbacks, distillation_loss
from visiondistill.distill.callbacks import (
    AttentionTransfer,
    DecoupledDistillation,
    FeatureHint,
    HintConnector,
    LogitDistillation,
    ShapeMismatchError,
)
from visiondistill.distill.protocol import ProtocolError, freeze_teacher
from visiondistill.distill.recorder import FeatureRecorder, LayerNotFoundError, feature_stages, resolve_layer
from visiondistill.distill.segmentation import ChannelWiseDistillation, PairwiseSimilarity, PixelwiseDistillation

__all__ = [
    "AttentionTransfer",
    "ChannelWiseDistillation",
    "DecoupledDistillation",
    "DistillationCallback",
    "FeatureHint",
    "FeatureRecorder",
    "HintConnector",
    "LayerNotFoundError",
    "LogitDistillation",
    "PairwiseSimilarity",
    "PixelwiseDistillation",
    "ProtocolError",
    "ShapeMismatchError",
    "distillation_callbacks",
    "distillation_loss",
    "feature_stages",
    "freeze_teacher",
    "resolve_layer",
]
