"""Model factories: timm classifiers (and, per task, segmenters, detectors, keypoint heads)."""

from visiondistill.models.checkpoints import CheckpointError, extract_state_dict, load_weights, read_checkpoint
from visiondistill.models.classifiers import ClassifierSpec, create_classifier
from visiondistill.models.segmenters import SegmenterSpec, create_segmenter, load_segmenter

__all__ = [
    "CheckpointError",
    "ClassifierSpec",
    "SegmenterSpec",
    "create_classifier",
    "create_segmenter",
    "extract_state_dict",
    "load_segmenter",
    "load_weights",
    "read_checkpoint",
]
