"""Model factories: timm classifiers (and, per task, segmenters, detectors, keypoint heads)."""

from visiondistill.models.checkpoints import CheckpointError, extract_state_dict, load_weights, read_checkpoint
from visiondistill.models.classifiers import ClassifierSpec, create_classifier
from visiondistill.models.detectors import Detector, DetectorOutput, DetectorSpec, create_detector
from visiondistill.models.keypoint_models import (
    KeypointModelSpec,
    SimpleBaseline,
    create_keypoint_model,
)
from visiondistill.models.segmenters import SegmenterSpec, create_segmenter

__all__ = [
    "CheckpointError",
    "ClassifierSpec",
    "Detector",
    "DetectorOutput",
    "DetectorSpec",
    "KeypointModelSpec",
    "SegmenterSpec",
    "SimpleBaseline",
    "create_classifier",
    "create_detector",
    "create_keypoint_model",
    "create_segmenter",
    "extract_state_dict",
    "load_weights",
    "read_checkpoint",
]
