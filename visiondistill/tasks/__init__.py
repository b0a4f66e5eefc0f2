"""LightningModules, one per task, sharing the teacher/student logic of `DistillationTask`."""

from visiondistill.tasks.base import DistillationTask
from visiondistill.tasks.classification import ClassificationTask

__all__ = ["ClassificationTask", "DistillationTask"]
