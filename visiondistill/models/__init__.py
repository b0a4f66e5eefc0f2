"""Model factories: timm classifiers (and, per task, segmenters, detectors, keypoint heads)."""

from visiondistill.models.checkpoints import CheckpointError, extract_state_dict, load_weights, read_checkpoint
from visiondistill.models.classifiers import ClassifierSpec, create_classifier

__all__ = [
    "CheckpointError",
    "ClassifierSpec",
    "create_classifier",
    "extract_state_dict",
    "load_weights",
    "read_checkpoint",
]
