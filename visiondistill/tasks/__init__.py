"""LightningModules, one per task, sharing the teacher/student logic of `DistillationTask`."""

from visiondistill.tasks.base import DistillationTask
from visiondistill.tasks.classification import ClassificationTask
from visiondistill.tasks.segmentation import SegmentationTask

__all__ = ["ClassificationTask", "DistillationTask", "SegmentationTask"]
