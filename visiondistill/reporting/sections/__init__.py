"""Report sections contributed per task: what the generic report cannot say about a task's outputs.

The generic report (`visiondistill.reporting.report`) measures every run the same way; a task adds its own section
through a builder registered here against its task module class. A report of runs of a class uses the builders of
that class and of its bases (most specific first), so a subclass of `DetectionTask` keeps the detection section.
Register one for your own task with `register_section`.
"""

from __future__ import annotations

from visiondistill.reporting.document import Block
from visiondistill.reporting.sections.context import SectionBuilder, SectionContext
from visiondistill.reporting.sections.detection import detection_section
from visiondistill.reporting.sections.keypoints import keypoint_section
from visiondistill.reporting.sections.multitask import multitask_section
from visiondistill.reporting.sections.quantized import quantization_section
from visiondistill.reporting.sections.segmentation import segmentation_section
from visiondistill.tasks import DetectionTask, DistillationTask, KeypointTask, MultiTaskModule, SegmentationTask

__all__ = ["TASK_SECTIONS", "SectionBuilder", "SectionContext", "register_section", "task_sections"]

#: Section builders by task module class.
TASK_SECTIONS: dict[type, list[SectionBuilder]] = {
    SegmentationTask: [segmentation_section],
    DetectionTask: [detection_section],
    KeypointTask: [keypoint_section],
    MultiTaskModule: [multitask_section],
    DistillationTask: [quantization_section],  # every task: the figures of `export --quantize int8`, when written
}

#: What a builder may raise on runs it cannot describe; the report is then written without that section.
_SECTION_ERRORS = (KeyError, ValueError, RuntimeError, NotImplementedError)


def register_section(task_class: type, builder: SectionBuilder) -> SectionBuilder:
    """Adds a section builder to the reports of a task module class (and of its subclasses).

    Args:
        task_class: The task module class.
        builder: Takes a `SectionContext` and returns report blocks; it may write pictures into ``context.out``.

    Returns:
        The builder (so the function also serves as a decorator's body).
    """
    builders = TASK_SECTIONS.setdefault(task_class, [])
    if builder not in builders:
        builders.append(builder)
    return builder


def task_sections(context: SectionContext) -> list[Block]:
    """The blocks of every section registered for the class of the runs' task module or one of its bases."""
    module = context.modules[context.runs[0].name]
    builders = [b for cls in type(module).__mro__ for b in TASK_SECTIONS.get(cls, [])]
    blocks: list[Block] = []
    for builder in dict.fromkeys(builders):
        try:
            blocks += builder(context)
        except _SECTION_ERRORS as error:
            context.log(f"   section {builder.__name__} not written: {type(error).__name__}: {error}")
    return blocks
