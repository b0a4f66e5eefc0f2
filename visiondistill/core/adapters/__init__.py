"""The built-in saliency adapters, one per task; importing this package registers them by task name."""

from visiondistill.core.adapters.detection import BoxScoreTarget, DetectionSaliencyAdapter, DetectionScores
from visiondistill.core.adapters.keypoints import KeypointPeakTarget, KeypointSaliencyAdapter, keypoint_disc_masks
from visiondistill.core.adapters.segmentation import ClassRegionTarget, SegmentationSaliencyAdapter
from visiondistill.core.saliency import ClassificationSaliencyAdapter

__all__ = [
    "BoxScoreTarget",
    "ClassRegionTarget",
    "ClassificationSaliencyAdapter",
    "DetectionSaliencyAdapter",
    "DetectionScores",
    "KeypointPeakTarget",
    "KeypointSaliencyAdapter",
    "SegmentationSaliencyAdapter",
    "keypoint_disc_masks",
]
