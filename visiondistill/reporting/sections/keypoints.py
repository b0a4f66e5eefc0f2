"""The keypoint section of a report: the decoding settings, and every run's keypoints drawn on test crops."""

from __future__ import annotations

import torch

from visiondistill.explain.keypoints import keypoint_grid
from visiondistill.explain.render import save_png
from visiondistill.reporting.document import Block, Heading, Image, Paragraph
from visiondistill.reporting.sections.context import SectionContext

#: Test crops drawn in the picture.
PICTURE_IMAGES = 8


@torch.no_grad()
def keypoint_section(context: SectionContext) -> list[Block]:
    """How keypoints were decoded and scored, and a picture of true and predicted keypoints of every run."""
    module = context.modules[context.runs[0].name]
    batch = {key: value[:PICTURE_IMAGES] for key, value in context.batch.items()}
    images = batch["image"]
    columns = [(run.name, context.modules[run.name].decode(context.network(run)(images))[0]) for run in context.runs]
    names = getattr(context.datamodule, "keypoint_names", None)
    picture = keypoint_grid(
        context.display(images),
        batch["keypoints"],
        columns,
        keypoint_names=names,
        samples_per_row=2,
        title="test crops",
    )
    save_png(picture, context.out / "keypoints.png")
    sigmas = list(getattr(module, "oks_sigmas", None) or [])
    sigma_text = f"σ = {', '.join(f'{s:g}' for s in sorted(set(sigmas)))} per keypoint" if sigmas else "COCO's σ"
    return [
        Heading("Keypoints: decoding and predictions"),
        Paragraph(
            f"Crops of {images.shape[-1]} px, heatmaps at stride {module.stride:g}; `{module.decoding}` decoding, "
            f"flip test {'on' if module.flip_test else 'off'} in the test metrics. PCK counts a labelled keypoint "
            "within the given fraction of the box's longer side; OKS AP is COCO's keypoint AP (OKS 0.50:0.95, "
            f"{sigma_text}), in image coordinates."
        ),
        Image(
            "keypoints.png",
            "circles: true keypoints, crosses: each run's prediction (no flip test), colours in keypoint order",
        ),
    ]
