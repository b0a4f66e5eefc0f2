"""Model factories, checkpoint weights and teacher-to-student class maps.

Classifiers come from timm, torchvision, the hub or a class path; segmenters, detectors and keypoint heads per task.
"""

from visiondistill.core.class_map import ClassMap, map_logits
from visiondistill.models.checkpoints import (
    CheckpointError,
    classifier_prefix,
    extract_state_dict,
    load_weights,
    read_checkpoint,
)
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
    "ClassMap",
    "ClassifierSpec",
    "Detector",
    "DetectorOutput",
    "DetectorSpec",
    "KeypointModelSpec",
    "SegmenterSpec",
    "SimpleBaseline",
    "classifier_prefix",
    "create_classifier",
    "create_detector",
    "create_keypoint_model",
    "create_segmenter",
    "extract_state_dict",
    "load_weights",
    "map_logits",
    "read_checkpoint",
]
