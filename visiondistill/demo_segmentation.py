"""The segmentation section of ``make demo``: teacher, scratch and distilled students on the shapes, plus lesions.

Trains ``configs/segmentation/shapes_teacher.yaml``, ``shapes_student_scratch.yaml`` and ``shapes_distilled.yaml``
(each an ordinary ``visiondistill fit`` run, shown before it starts), then the medical-imaging example
``lesions_medical.yaml``, and writes ``<out>/segmentation/report.md``: mIoU, Dice, size, latency and agreement with
the teacher of each shapes model, and per-class IoU with Grad-CAM overlays on the lesions for the medical run.

The shapes data goes to ``<data_dir>_segmentation`` and the lesions to ``<data_dir>_lesions``: their splits differ
from the classification demo's, and a data folder holds one set of generation parameters.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassF1Score, MulticlassJaccardIndex

from visiondistill.demo import DemoRun, DemoSettings, _data_args, _fit
from visiondistill.evaluation import count_flops, count_parameters, markdown_table, measure_latency

__all__ = ["LESION_RUN", "SEGMENTATION_RUNS", "SegmenterReport", "evaluate_segmenter", "run_segmentation"]

SEGMENTATION_RUNS = (
    DemoRun("teacher (Unet resnet18)", "configs/segmentation/shapes_teacher.yaml", "teacher"),
    DemoRun(
        "student, scratch (Unet tu-test_resnet)", "configs/segmentation/shapes_student_scratch.yaml", "student_scratch"
    ),
    DemoRun(
        "student, distilled CWD (Unet tu-test_resnet)",
        "configs/segmentation/shapes_distilled.yaml",
        "student_distilled",
        True,
    ),
)
LESION_RUN = DemoRun("lesions (Unet tu-test_resnet, Dice + CE)", "configs/segmentation/lesions_medical.yaml", "lesions")

#: Test images of the teacher-agreement measurement, and the layer explained (the decoder output: full resolution).
AGREEMENT_IMAGES = 32
AGREEMENT_LAYERS = ("decoder",)


@dataclass
class SegmenterReport:
    """Quality and cost of one segmenter on one split."""

    name: str
    miou: float
    dice: float
    per_class_iou: dict[str, float]
    params: int
    flops: int
    latency_ms: float


@torch.inference_mode()
def evaluate_segmenter(
    name: str, model: nn.Module, batches: Any, class_names: list[str], ignore_index: int | None = None
) -> SegmenterReport:
    """mIoU, mean Dice and per-class IoU over a dataloader, plus params, FLOPs and batch-1 CPU latency.

    Args:
        name: Row name in reports.
        model: The segmenter (measured on the CPU).
        batches: ``(images, masks)`` batches of the held-out split.
        class_names: Class names in index order.
        ignore_index: Mask value left out of the metrics.

    Returns:
        The report.

    Raises:
        ValueError: When the split is empty.
    """
    model = model.eval().cpu()
    iou = MulticlassJaccardIndex(len(class_names), average=None, ignore_index=ignore_index)
    dice = MulticlassF1Score(len(class_names), average=None, ignore_index=ignore_index)
    example = None
    for images, masks in batches:
        predictions = model(images).argmax(dim=1)
        iou.update(predictions, masks)
        dice.update(predictions, masks)
        example = images[:1] if example is None else example
    if example is None:
        raise ValueError(f"{name}: the evaluation split is empty")
    per_class = iou.compute()
    return SegmenterReport(
        name=name,
        miou=float(per_class.mean()),
        dice=float(dice.compute().mean()),
        per_class_iou={c: float(v) for c, v in zip(class_names, per_class, strict=True)},
        params=count_parameters(model),
        flops=count_flops(model, example),
        latency_ms=measure_latency(model, example),
    )


def _test_batches(datamodule: Any, limit: int) -> tuple[Tensor, Tensor]:
    images, masks = [], []
    for batch_images, batch_masks in datamodule.test_dataloader():
        images.append(batch_images)
        masks.append(batch_masks)
        if sum(len(i) for i in images) >= limit:
            break
    return torch.cat(images)[:limit], torch.cat(masks)[:limit]


def _latest_saliency_grid(run_dir: Path) -> Path | None:
    grids = sorted(run_dir.glob("saliency/epoch_*/grid.png"))
    return grids[-1] if grids else None


def run_segmentation(settings: DemoSettings) -> Path:
    """Trains the shapes runs and the lesion run, evaluates them on their test splits and writes the report.

    Args:
        settings: The demo's settings (``data_dir`` is suffixed ``_segmentation`` / ``_lesions`` here).

    Returns:
        The report's path.
    """
    from visiondistill.data import ShapesSegmentation, SyntheticLesions
    from visiondistill.explain.segmentation import segmentation_teacher_agreement
    from visiondistill.models.segmenters import load_segmenter

    task, runs = "segmentation", SEGMENTATION_RUNS
    base = settings.data_dir
    shapes_settings = dataclasses.replace(settings, data_dir=base.with_name(base.name + "_segmentation"))
    lesion_settings = dataclasses.replace(settings, data_dir=base.with_name(base.name + "_lesions"))
    datamodule = ShapesSegmentation(**_data_args(runs[0].config, shapes_settings))
    print(f"== data: shapes segmentation under {shapes_settings.data_dir} (generated on first use)", flush=True)
    datamodule.prepare_data()
    lesions = SyntheticLesions(**_data_args(LESION_RUN.config, lesion_settings))
    print(f"== data: synthetic lesions under {lesion_settings.data_dir} (generated on first use)", flush=True)
    lesions.prepare_data()

    seconds = {run.label: _fit(task, run, runs[0], shapes_settings) for run in runs}
    seconds[LESION_RUN.label] = _fit(task, LESION_RUN, LESION_RUN, lesion_settings)

    datamodule.setup("test")
    models = {run.label: load_segmenter(settings.checkpoint(task, run))[0] for run in runs}
    reports = [
        evaluate_segmenter(run.label, models[run.label], datamodule.test_dataloader(), datamodule.class_names)
        for run in runs
    ]
    teacher, scratch, distilled = reports
    images, masks = _test_batches(datamodule, AGREEMENT_IMAGES)
    agreement = {
        r.name: segmentation_teacher_agreement(
            models[teacher.name],
            models[r.name],
            images,
            masks,
            teacher_layers=AGREEMENT_LAYERS,
            student_layers=AGREEMENT_LAYERS,
        )
        for r in (scratch, distilled)
    }

    def cell(name: str, key: str) -> str:
        return f"{agreement[name][key]:.3f}" if name in agreement and key in agreement[name] else "–"

    rows = [
        {
            "model": r.name,
            "mIoU (test)": f"{100 * r.miou:.1f}%",
            "Dice": f"{100 * r.dice:.1f}%",
            "params": f"{r.params / 1e6:.2f} M",
            "compression": f"{teacher.params / r.params:.1f}×",
            "MFLOPs": f"{r.flops / 1e6:.1f}",
            "CPU latency / image": f"{r.latency_ms:.2f} ms",
            "train time": f"{seconds[r.name]:.0f} s" if seconds[r.name] else "reused",
            "pixels agreeing with teacher": cell(r.name, "pixel_agreement"),
            "CAM pearson vs teacher": cell(r.name, "pearson"),
            "pointing game": cell(r.name, "pointing_game_student"),
        }
        for r in reports
    ]
    per_class = [{"model": r.name, **{c: f"{100 * v:.0f}%" for c, v in r.per_class_iou.items()}} for r in reports]

    lesions.setup("test")
    lesion_model = load_segmenter(settings.checkpoint(task, LESION_RUN))[0]
    lesion_report = evaluate_segmenter(LESION_RUN.label, lesion_model, lesions.test_dataloader(), lesions.class_names)
    out = settings.out / task
    out.mkdir(parents=True, exist_ok=True)
    grid = _latest_saliency_grid(settings.run_dir(task, LESION_RUN))
    if grid is not None:
        shutil.copyfile(grid, out / "lesions_saliency.png")
    lesion_text = (
        f"![Grad-CAM on lesions]({'lesions_saliency.png'}) — input | CAM of the true lesion class (its logits summed "
        f"over its mask), from `{grid}`."
        if grid is not None
        else "No saliency grid was written (the run was shorter than the GradCAMCallback's every_n_epochs)."
    )
    gain = 100 * (distilled.miou - scratch.miou)
    table = markdown_table(rows)
    text = "\n\n".join(
        [
            "# visiondistill demo — semantic segmentation",
            "## Synthetic shapes: background + 6 shape classes",
            f"Held-out test split: {len(datamodule.test_dataloader().dataset)} images. mIoU and Dice are means over "
            "the 7 classes; latency: batch 1, CPU, median of 50 runs.",
            table,
            f"Distillation changed the student's mIoU by {gain:+.1f} points over training from scratch "
            f"(teacher: {100 * teacher.miou:.1f}%). These are single runs; this tiny student trained from scratch "
            "stays stuck near all-background on some seeds, so compare over seeds with "
            "`python benchmarks/seed_sweep.py benchmarks/sweeps/segmentation.yaml` before drawing conclusions.",
            f"Agreement with the teacher on the first {len(images)} test images: the fraction of pixels where the "
            "student's predicted class equals the teacher's, and Grad-CAM at the decoder output (each image's "
            "dominant class in the teacher's prediction, its logits summed over its true mask; pointing game "
            "against that mask). Full metrics:",
            markdown_table(
                [{"student": name, **{k: f"{v:.3f}" for k, v in values.items()}} for name, values in agreement.items()]
            ),
            "### Per-class IoU (test)",
            markdown_table(per_class),
            "## Medical-imaging example: synthetic lesions (single channel, ~98% background)",
            f"`{LESION_RUN.config}`: Dice + class-weighted cross-entropy, "
            f"test mIoU {100 * lesion_report.miou:.1f}%, Dice {100 * lesion_report.dice:.1f}%.",
            markdown_table(
                [
                    {
                        "model": lesion_report.name,
                        **{c: f"{100 * v:.0f}%" for c, v in lesion_report.per_class_iou.items()},
                    }
                ]
            ),
            lesion_text,
            "Runs: "
            + ", ".join(f"`{settings.run_dir(task, run)}`" for run in (*runs, LESION_RUN))
            + f" (TensorBoard: `tensorboard --logdir {settings.runs / task}`).",
        ]
    )
    report = out / "report.md"
    report.write_text(text + "\n")
    print("\n" + table + f"\n\nDistilled vs scratch: {gain:+.1f} mIoU points. Report: {report}", flush=True)
    return report
