"""The distillation callback stack.

A LightningModule is distillable when it has ``student`` and ``teacher`` attributes and adds
`distillation_loss` to its task loss in ``training_step``; every `DistillationCallback` on the trainer
then contributes one weighted, logged term.
"""

from visiondistill.core.callback import DistillationCallback, distillation_callbacks, distillation_loss
from visiondistill.core.protocol import ProtocolError, freeze_teacher
from visiondistill.core.recorder import FeatureRecorder, LayerNotFoundError, feature_stages, resolve_layer
from visiondistill.distill.cache import TeacherCacheError, TeacherOutputCache
from visiondistill.distill.callbacks import (
    AttentionTransfer,
    DecoupledDistillation,
    FeatureHint,
    HintConnector,
    LogitDistillation,
    ShapeMismatchError,
)
from visiondistill.distill.detection import DetectionLogitDistillation, FeatureImitation, FPNChannelWiseDistillation
from visiondistill.distill.keypoints import HeatmapDistillation
from visiondistill.distill.saliency_alignment import SaliencyAlignment
from visiondistill.distill.segmentation import ChannelWiseDistillation, PairwiseSimilarity, PixelwiseDistillation
from visiondistill.distill.weights import AdaptiveDistillationWeights, ScheduleSpec, WeightSchedule

__all__ = [
    "AdaptiveDistillationWeights",
    "AttentionTransfer",
    "ChannelWiseDistillation",
    "DecoupledDistillation",
    "DetectionLogitDistillation",
    "DistillationCallback",
    "FPNChannelWiseDistillation",
    "FeatureHint",
    "FeatureImitation",
    "FeatureRecorder",
    "HeatmapDistillation",
    "HintConnector",
    "LayerNotFoundError",
    "LogitDistillation",
    "PairwiseSimilarity",
    "PixelwiseDistillation",
    "ProtocolError",
    "SaliencyAlignment",
    "ScheduleSpec",
    "ShapeMismatchError",
    "TeacherCacheError",
    "TeacherOutputCache",
    "WeightSchedule",
    "distillation_callbacks",
    "distillation_loss",
    "feature_stages",
    "freeze_teacher",
    "resolve_layer",
]
