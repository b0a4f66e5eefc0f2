"""The detection section of a report: each student's boxes against the teacher's, and a grid of boxes and CAMs."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from visiondistill.explain.detection import detection_grid, detection_teacher_agreement
from visiondistill.explain.render import save_png
from visiondistill.reporting.document import Block, Heading, Image, Paragraph, Table
from visiondistill.reporting.sections.context import SectionContext
from visiondistill.tasks.detection import box_map_vs_teacher

#: Test images drawn in the grid (each explained with Grad-CAM over every FPN level of both networks).
GRID_IMAGES = 8
#: Teacher detections at or above this score are the students' pseudo ground truth and the boxes drawn.
SCORE_THRESHOLD = 0.5


@torch.no_grad()
def _detections(network: nn.Module, images: Tensor) -> list[dict[str, Tensor]]:
    return [{k: v.detach().cpu() for k, v in d.items()} for d in network.postprocess(network(images))]


def detection_section(context: SectionContext) -> list[Block]:
    """The test split's box counts; with a teacher run, each student's mAP@50 against the teacher's boxes, and a grid.

    The grid shows, for the distilled student (`SectionContext.shown_student`), the true boxes (green), the
    teacher's (red) and the student's (blue), beside Grad-CAM of both networks explaining the teacher's detections.
    """
    blocks: list[Block] = [Heading("Detection: boxes")]
    stats = getattr(context.datamodule.test_dataloader().dataset, "stats", None)
    if isinstance(stats, Mapping) and "images" in stats:
        blocks.append(
            Paragraph(
                f"Test split: {stats['images']} images ({stats.get('empty_images', '?')} without objects), "
                f"{stats.get('annotations', '?')} boxes. mAP is COCO's box AP over IoU 0.50:0.95 (pycocotools)."
            )
        )
    teacher, shown = context.teacher, context.shown_student
    if teacher is None or shown is None:
        return blocks
    images, targets = context.batch[0], list(context.batch[1])
    reference = _detections(context.network(teacher), images)
    rows = []
    for run in context.students:
        agreement = box_map_vs_teacher(_detections(context.network(run), images), reference, SCORE_THRESHOLD)
        # torchmetrics gives -1 when there is nothing to match: the teacher kept no box at the threshold.
        shown_value = f"{100 * agreement:.1f}" if agreement >= 0 else f"– (no teacher box ≥ {SCORE_THRESHOLD})"
        rows.append({"student": run.name, "mAP@50 vs teacher's boxes": shown_value})
    blocks += [
        Paragraph(
            f"On the first {len(images)} test images, each student's box mAP@50 with the teacher's detections (score "
            f"≥ {SCORE_THRESHOLD}) as the ground truth: 100 = the teacher's boxes, found again."
        ),
        Table(rows),
    ]
    count = min(GRID_IMAGES, len(images))
    _, extras = detection_teacher_agreement(
        context.network(teacher),
        context.network(shown),
        images[:count],
        targets[:count],
        score_threshold=SCORE_THRESHOLD,
    )
    grid = detection_grid(
        context.display(images[:count]),
        [t["boxes"] for t in targets[:count]],
        extras["maps"]["teacher"],
        extras["maps"]["student"],
        extras["teacher"],
        extras["student"],
        score_threshold=SCORE_THRESHOLD,
        title=f"boxes: true (green), teacher (red), {shown.name} (blue) · Grad-CAM of the teacher's detections",
    )
    save_png(grid, context.out / "detections.png")
    caption = (
        f"input with true, teacher and {shown.name} boxes | teacher CAM | student CAM (every FPN level, explaining "
        "the teacher's detections)"
    )
    return [*blocks, Image("detections.png", caption)]
