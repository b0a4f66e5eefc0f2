"""LightningModules, one per task, sharing the teacher/student logic of `DistillationTask`."""

from visiondistill.tasks.base import DistillationTask
from visiondistill.tasks.classification import ClassificationTask
from visiondistill.tasks.detection import DetectionTask
from visiondistill.tasks.keypoints import KeypointTask
from visiondistill.tasks.multitask import MultiTaskModule
from visiondistill.tasks.segmentation import SegmentationTask

__all__ = [
    "ClassificationTask",
    "DetectionTask",
    "DistillationTask",
    "KeypointTask",
    "MultiTaskModule",
    "SegmentationTask",
]
