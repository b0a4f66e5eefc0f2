"""The segmentation section of a report: how far each student's masks agree with the teacher's, class by class."""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassJaccardIndex

from visiondistill.core.protocol import batch_inputs, output_logits
from visiondistill.reporting.document import Block, Heading, Paragraph, Table
from visiondistill.reporting.sections.context import SectionContext


@torch.no_grad()
def segmentation_section(context: SectionContext) -> list[Block]:
    """Pixel agreement and per-class IoU of each student's predicted masks against the teacher's predicted masks.

    The IoU against the true masks, class by class, is in the generic report (``test/iou/<class>``); this section
    says where a student's predictions part from its teacher's. Nothing without a teacher run.
    """
    teacher = context.teacher
    if teacher is None or not context.students:
        return []
    images = batch_inputs(context.batch)
    reference = output_logits(context.network(teacher)(images)).argmax(1)
    module = context.modules[teacher.name]
    names = list(getattr(module, "class_names", None) or range(module.num_classes))
    rows = []
    for run in context.students:
        predicted = output_logits(context.network(run)(images)).argmax(1)
        iou = MulticlassJaccardIndex(len(names), average=None)(predicted, reference)
        row = {"student": run.name, "pixels agreeing": f"{100 * float((predicted == reference).float().mean()):.1f}%"}
        rows.append(row | {str(name): f"{100 * float(value):.0f}%" for name, value in zip(names, iou, strict=True)})
    return [
        Heading("Segmentation: the students' masks against the teacher's"),
        Paragraph(
            f"On the first {len(images)} test images: the fraction of pixels where the student predicts the teacher's "
            "class, and the IoU of each class with the teacher's predicted mask as the reference (a class neither "
            "network predicts counts 0%)."
        ),
        Table(rows),
    ]
