"""Task sections of the report: registered per task module class, found through the class's bases."""

from __future__ import annotations

from types import SimpleNamespace

from visiondistill.reporting.document import Paragraph
from visiondistill.reporting.sections import TASK_SECTIONS, register_section, task_sections
from visiondistill.tasks import ClassificationTask, DetectionTask, KeypointTask, SegmentationTask


class BaseTask:
    pass


class ChildTask(BaseTask):
    pass


def _context(module: object, log: list[str]) -> SimpleNamespace:
    return SimpleNamespace(runs=[SimpleNamespace(name="run")], modules={"run": module}, log=log.append)


def test_every_built_in_task_but_classification_has_a_section():
    assert all(TASK_SECTIONS.get(task) for task in (SegmentationTask, DetectionTask, KeypointTask))
    assert ClassificationTask not in TASK_SECTIONS  # the generic report says all there is


def test_sections_of_the_class_and_its_bases_most_specific_first():
    def base(context):
        return [Paragraph("base")]

    def child(context):
        return [Paragraph("child")]

    def broken(context):
        raise ValueError("no teacher boxes")

    try:
        register_section(BaseTask, base)
        register_section(ChildTask, child)
        register_section(ChildTask, child)  # registering twice adds it once
        log: list[str] = []
        assert task_sections(_context(ChildTask(), log)) == [Paragraph("child"), Paragraph("base")]
        assert task_sections(_context(BaseTask(), log)) == [Paragraph("base")]
        assert task_sections(_context(object(), log)) == []
        register_section(ChildTask, broken)  # a failing section is left out and named, the report goes on
        assert task_sections(_context(ChildTask(), log)) == [Paragraph("child"), Paragraph("base")]
        assert log == ["   section broken not written: ValueError: no teacher boxes"]
    finally:
        TASK_SECTIONS.pop(BaseTask, None)
        TASK_SECTIONS.pop(ChildTask, None)
