"""The keypoint section of ``make demo``: teacher, scratch and distilled students on the shapes' extreme tips.

Trains ``configs/keypoints/shapes_teacher.yaml``, ``shapes_student_scratch.yaml`` and ``shapes_distilled.yaml`` (each
an ordinary ``visiondistill fit`` run, shown before it starts) and writes ``<out>/keypoints/report.md``: PCK@0.05,
PCK@0.1 and OKS AP on the test crops, size, latency and agreement with the teacher of each model, and a picture of
true and predicted keypoints. The data goes to ``<data_dir>_keypoints``: its splits differ from the other demos'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from visiondistill.demo import DemoRun, DemoSettings, _data_args, _fit
from visiondistill.evaluation import count_flops, count_parameters, markdown_table, measure_latency

__all__ = ["KEYPOINT_RUNS", "KeypointReport", "evaluate_keypoint_model", "run_keypoints"]

KEYPOINT_RUNS = (
    DemoRun("teacher (resnet18 to layer3 + 2 deconv)", "configs/keypoints/shapes_teacher.yaml", "teacher"),
    DemoRun(
        "student, scratch (test_resnet + 2 deconv)", "configs/keypoints/shapes_student_scratch.yaml", "student_scratch"
    ),
    DemoRun(
        "student, distilled FPD (test_resnet + 2 deconv)",
        "configs/keypoints/shapes_distilled.yaml",
        "student_distilled",
        True,
    ),
)

#: Test crops of the teacher-agreement measurement and of the picture, and the layer explained (the head's output,
#: at heatmap resolution).
AGREEMENT_IMAGES = 32
PICTURE_IMAGES = 8
AGREEMENT_LAYERS = ("head",)


@dataclass
class KeypointReport:
    """Quality and cost of one keypoint model on one split."""

    name: str
    pck05: float
    pck10: float
    ap: float
    params: int
    flops: int
    latency_ms: float


@torch.inference_mode()
def evaluate_keypoint_model(
    name: str,
    model: nn.Module,
    batches: Iterable[dict[str, Tensor]],
    oks_sigmas: Sequence[float],
    flip_pairs: Sequence[Sequence[int]] = (),
    flip_test: bool = True,
    decoding: str = "quarter",
    sigma: float = 1.0,
) -> KeypointReport:
    """PCK@0.05, PCK@0.1 and OKS AP over a dataloader of crops, plus params, FLOPs and batch-1 CPU latency.

    Decoding is the task's: argmax with a sub-pixel refinement, on heatmaps averaged with the mirrored crop's when
    ``flip_test`` is on. FLOPs and latency are of one plain forward pass (the flip test doubles both).

    Args:
        name: Row name in reports.
        model: The keypoint model (measured on the CPU).
        batches: Dict batches of `visiondistill.data.KeypointCrops`.
        oks_sigmas: Per-keypoint OKS constants.
        flip_pairs: Left/right keypoint pairs.
        flip_test: Average with the mirrored crops' heatmaps.
        decoding: ``"quarter"`` or ``"dark"`` (see `decode_heatmaps`).
        sigma: The target heatmaps' sigma (DARK's smoothing).

    Returns:
        The report.

    Raises:
        ValueError: When the split is empty.
    """
    from visiondistill.data.keypoints import flip_permutation
    from visiondistill.tasks.keypoint_metrics import PCK, KeypointAP, decode_heatmaps
    from visiondistill.tasks.keypoints import flip_back

    model = model.eval().cpu()
    permutation = flip_permutation([tuple(p) for p in flip_pairs], len(oks_sigmas))
    pck05, pck10, ap = PCK(0.05), PCK(0.1), KeypointAP(oks_sigmas)
    example = None
    for batch in batches:
        images = batch["image"]
        heatmaps = model(images)
        if flip_test:
            heatmaps = 0.5 * (heatmaps + flip_back(model(images.flip(-1)), permutation))
        coords, scores = decode_heatmaps(heatmaps, stride=model.stride, method=decoding, sigma=sigma)
        pck05.update(coords, batch["keypoints"], batch["box_size"])
        pck10.update(coords, batch["keypoints"], batch["box_size"])
        to_image = batch["to_image"]
        image_coords = coords @ to_image[:, :, :2].transpose(1, 2) + to_image[:, None, :, 2]
        ap.update(
            batch["image_id"], batch["image_keypoints"], batch["area"], batch["bbox"], image_coords, scores.mean(1)
        )
        example = images[:1] if example is None else example
    if example is None:
        raise ValueError(f"{name}: the evaluation split is empty")
    return KeypointReport(
        name=name,
        pck05=float(pck05.compute()),
        pck10=float(pck10.compute()),
        ap=float(ap.compute()),
        params=count_parameters(model),
        flops=count_flops(model, example),
        latency_ms=measure_latency(model, example),
    )


def _first_batches(datamodule: Any, limit: int) -> dict[str, Tensor]:
    parts: list[dict[str, Tensor]] = []
    for batch in datamodule.test_dataloader():
        parts.append(batch)
        if sum(len(p["image"]) for p in parts) >= limit:
            break
    return {key: torch.cat([p[key] for p in parts])[:limit] for key in parts[0]}


def _display(images: Tensor, datamodule: Any) -> Tensor:
    mean = torch.tensor(datamodule.mean).view(1, -1, 1, 1)
    std = torch.tensor(datamodule.std).view(1, -1, 1, 1)
    return (images * std + mean).clamp(0, 1)


def run_keypoints(settings: DemoSettings) -> Path:
    """Trains the three keypoint runs, evaluates them on the test crops and writes the report.

    Args:
        settings: The demo's settings (``data_dir`` is suffixed ``_keypoints`` here).

    Returns:
        The report's path.
    """
    from visiondistill.data import ShapesKeypoints
    from visiondistill.explain.keypoints import keypoint_grid, keypoint_teacher_agreement
    from visiondistill.explain.render import save_png
    from visiondistill.models.keypoint_models import load_keypoint_model
    from visiondistill.tasks.keypoint_metrics import decode_heatmaps

    task, runs = "keypoints", KEYPOINT_RUNS
    base = settings.data_dir
    kp_settings = dataclasses.replace(settings, data_dir=base.with_name(base.name + "_keypoints"))
    datamodule = ShapesKeypoints(**_data_args(runs[0].config, kp_settings))
    print(f"== data: shapes keypoints under {kp_settings.data_dir} (generated on first use)", flush=True)
    datamodule.prepare_data()

    seconds = {run.label: _fit(task, run, runs[0], kp_settings) for run in runs}

    datamodule.setup("test")
    loaded = {run.label: load_keypoint_model(settings.checkpoint(task, run)) for run in runs}
    models = {label: model for label, (model, _) in loaded.items()}
    hparams = loaded[runs[0].label][1]
    sigmas = hparams.get("oks_sigmas") or [0.05] * datamodule.num_keypoints
    decoding = str(hparams.get("decoding") or "quarter")
    reports = [
        evaluate_keypoint_model(
            run.label,
            models[run.label],
            datamodule.test_dataloader(),
            sigmas,
            flip_pairs=datamodule.flip_pairs,
            flip_test=bool(hparams.get("flip_test", True)),
            decoding=decoding,
            sigma=datamodule.sigma,
        )
        for run in runs
    ]
    teacher, scratch, distilled = reports
    probe = _first_batches(datamodule, AGREEMENT_IMAGES)
    agreement = {
        r.name: keypoint_teacher_agreement(
            models[teacher.name],
            models[r.name],
            probe["image"],
            probe["keypoints"],
            probe["box_size"],
            teacher_layers=AGREEMENT_LAYERS,
            student_layers=AGREEMENT_LAYERS,
        )
        for r in (scratch, distilled)
    }

    out = settings.out / task
    out.mkdir(parents=True, exist_ok=True)
    shown = {key: value[:PICTURE_IMAGES] for key, value in probe.items()}
    with torch.inference_mode():
        columns = [
            (
                label.split(" (")[0],
                decode_heatmaps(models[label](shown["image"]), models[label].stride, decoding, datamodule.sigma)[0],
            )
            for label in models
        ]
    picture = keypoint_grid(
        _display(shown["image"], datamodule),
        shown["keypoints"],
        columns,
        keypoint_names=datamodule.keypoint_names,
        samples_per_row=2,
        title="test crops",
    )
    save_png(picture, out / "keypoints.png")

    def cell(name: str, key: str) -> str:
        return f"{agreement[name][key]:.3f}" if name in agreement and key in agreement[name] else "–"

    rows = [
        {
            "model": r.name,
            "PCK@0.05 (test)": f"{100 * r.pck05:.1f}%",
            "PCK@0.1": f"{100 * r.pck10:.1f}%",
            "OKS AP": f"{100 * r.ap:.1f}",
            "params": f"{r.params / 1e6:.2f} M",
            "compression": f"{teacher.params / r.params:.1f}×",
            "MFLOPs": f"{r.flops / 1e6:.1f}",
            "CPU latency / crop": f"{r.latency_ms:.2f} ms",
            "train time": f"{seconds[r.name]:.0f} s" if seconds[r.name] else "reused",
            "CAM pearson vs teacher": cell(r.name, "pearson"),
            "pointing game": cell(r.name, "pointing_game_student"),
        }
        for r in reports
    ]
    gain = 100 * (distilled.pck05 - scratch.pck05)
    table = markdown_table(rows)
    test_size = len(datamodule.test_dataloader().dataset)
    text = "\n\n".join(
        [
            "# visiondistill demo — keypoints (top-down heatmaps)",
            "## Synthetic shapes: the four extreme tips (top, right, bottom, left) of each shape",
            f"Held-out test split: {test_size} instance crops of {datamodule.input_size} px (16×16 heatmaps), true "
            "boxes. PCK counts a labelled keypoint within 5% / 10% of the box's longer side; OKS AP is COCO's keypoint "
            f"AP (OKS 0.50:0.95, σ = {sigmas[0]:g} per keypoint), in image coordinates. Flip test on, {decoding} "
            "decoding; FLOPs and latency are of one plain forward pass (batch 1, CPU, median of 50 runs).",
            table,
            f"Distillation changed the student's PCK@0.05 by {gain:+.1f} points over training from scratch "
            f"(teacher: {100 * teacher.pck05:.1f}%); PCK@0.1 by {100 * (distilled.pck10 - scratch.pck10):+.1f}, "
            f"AP by {100 * (distilled.ap - scratch.ap):+.1f}.",
            f"Agreement with the teacher on the first {len(probe['image'])} test crops: Grad-CAM at the head's output "
            "(16×16), explaining the sum of the four heatmap peaks, for teacher and student; the pointing game asks "
            "whether a CAM's peak lies within 10% of the box size of a labelled keypoint. Full metrics:",
            markdown_table(
                [{"student": name, **{k: f"{v:.3f}" for k, v in values.items()}} for name, values in agreement.items()]
            ),
            "![true and predicted keypoints](keypoints.png) — circles: true keypoints, crosses: each model's "
            "prediction (no flip test), colours in the order top, right, bottom, left.",
            "Runs: "
            + ", ".join(f"`{settings.run_dir(task, run)}`" for run in runs)
            + f" (TensorBoard: `tensorboard --logdir {settings.runs / task}`).",
        ]
    )
    report = out / "report.md"
    report.write_text(text + "\n")
    print("\n" + table + f"\n\nDistilled vs scratch: {gain:+.1f} PCK@0.05 points. Report: {report}", flush=True)
    return report
