"""``visiondistill report RUN_DIR [RUN_DIR …]``: one page comparing teacher, scratch and distilled students.

For each run folder it measures the best checkpoint on the test split (the task module's own ``test/*`` metrics),
the network's size, FLOPs, CPU latency and checkpoint size, and — for the students — agreement with the teacher's
saliency and attention on the same test images; it plots the logged curves (task metric, agreement, distillation
terms) and writes ``report.md`` and a self-contained ``report.html`` (images embedded), plus a
``MODEL_CARD_<run>.md`` for every distilled student beside the report. Nothing is written into the run folders.

Examples::

    visiondistill report runs/classification/teacher runs/classification/student_scratch runs/classification/student_kd
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from visiondistill.core.errors import ConfigError
from visiondistill.reporting.document import Block, Heading, Image, Paragraph, Table, to_html, to_markdown
from visiondistill.reporting.measure import Measurements, load_run_module, measure_runs, metric_levels, probe_batch
from visiondistill.reporting.model_card import write_model_card
from visiondistill.reporting.plots import plot_curves
from visiondistill.reporting.runs import Run, RunError, assign_roles, build_datamodule, read_run
from visiondistill.reporting.sections import SectionContext, task_sections
from visiondistill.reporting.sections.explanations import ExplanationSettings, explanation_sections

#: Metrics whose values are fractions shown as percentages (anything else is shown as a plain number).
_LOSS_WORDS = ("loss", "distance", "kld")


def format_value(key: str, value: float) -> str:
    """A metric value for a table: fractions as percentages, losses and distances as numbers."""
    if any(word in key for word in _LOSS_WORDS) or not 0.0 <= value <= 1.0:
        return f"{value:.4g}"
    return f"{100 * value:.1f}%"


def _ratio(reference: float, value: float) -> str:
    return f"{reference / value:.1f}×" if value > 0 else "–"


def headline_metrics(measured: dict[str, Measurements], heads: Sequence[str] = ()) -> list[str]:
    """Test metrics with one level (``test/miou``), the loss last; per-class metrics have two (``test/iou/cat``).

    A multi-task run's metrics carry their head (``test/<head>/miou``, for each of ``heads``): those are headline
    metrics too, and their per-class metrics have three levels (``test/seg/iou/cat``).
    """
    keys = sorted({k for m in measured.values() for k in m.test if metric_levels(k, heads) == 1})
    return [k for k in keys if "loss" not in k] + [k for k in keys if "loss" in k]


def per_class_families(measured: dict[str, Measurements], heads: Sequence[str] = ()) -> dict[str, list[str]]:
    """Per-class test metrics grouped by family: ``{"test/iou": ["test/iou/background", …]}``."""
    families: dict[str, list[str]] = {}
    for m in measured.values():
        for key in m.test:
            if metric_levels(key, heads) >= 2:
                family = key.rsplit("/", 1)[0]
                if key not in families.setdefault(family, []):
                    families[family].append(key)
    return families


def build_report(
    runs: Sequence[Run],
    measured: dict[str, Measurements],
    out: Path,
    sections: Sequence[Block] = (),
    test_size: int | None = None,
    heads: Sequence[str] = (),
) -> list[Block]:
    """The report's blocks; writes its plots and copied saliency grids into ``out``.

    Args:
        runs: The runs in report order.
        measured: Their measurements by run name.
        out: The report's folder.
        sections: The blocks the task contributes (`visiondistill.reporting.sections.task_sections`), placed after
            the agreement with the teacher.
        test_size: Samples in the test split, stated above the metrics.
        heads: The output heads of a multi-task student (``heads`` of its task module): its metrics are per head.
    """
    task = runs[0].task
    teacher = next((run for run in runs if run.role == "teacher"), None)
    blocks: list[Block] = [Heading(f"visiondistill run report — {task}", 1)]
    blocks.append(
        Table(
            [
                {
                    "run": run.name,
                    "role": run.role,
                    "network": run.model_name,
                    "epochs": run.epochs or "?",
                    "train time": f"{run.train_seconds:.0f} s" if run.train_seconds is not None else "?",
                    "distilled with": ", ".join(_distillation_terms(run)) or "–",
                    "folder": f"`{run.path}`",
                }
                for run in runs
            ]
        )
    )

    blocks.append(
        Paragraph(
            "Train time: wall time from the first to the last logged value of the run. Logged curves and images: "
            f"`tensorboard --logdir {runs[0].path.parent}`."
        )
    )
    headline = headline_metrics(measured, heads)
    blocks += [
        Heading("Task metrics (test split, best checkpoint)"),
        *([Paragraph(f"Test split: {test_size} samples.")] if test_size is not None else []),
        Table(
            [
                {"run": r.name, **{k: format_value(k, measured[r.name].test.get(k, float("nan"))) for k in headline}}
                for r in runs
            ]
        ),
    ]
    if teacher is not None:
        scratch = [r for r in runs if r.role == "scratch"]
        distilled = [r for r in runs if r.role == "distilled"]
        monitor = _test_key(runs[0].monitor[0])
        if scratch and distilled and monitor in measured[scratch[0].name].test:
            base = measured[scratch[0].name].test
            others = [k for k in headline if k != monitor and "loss" not in k and k in base]
            gains = "; ".join(
                f"{r.name}: "
                + ", ".join(f"`{k}` {100 * (measured[r.name].test[k] - base[k]):+.1f}" for k in [monitor, *others])
                for r in distilled
            )
            blocks.append(
                Paragraph(
                    f"Distillation changed (points, against `{scratch[0].name}`) {gains}; teacher "
                    f"`{monitor}` {format_value(monitor, measured[teacher.name].test[monitor])}. One seed per run: "
                    "differences of a few points can be run-to-run noise (see `benchmarks/seed_sweep.py`)."
                )
            )

    reference = measured[teacher.name] if teacher is not None else None
    blocks += [
        Heading("Compression"),
        Paragraph(
            "Parameters and FLOPs (one forward pass on one test image, `torch.utils.flop_counter`, a multiply-add "
            "counts 2) of the trained network; latency: batch 1, CPU, median of 50 runs after 10 warm-up runs, on "
            "the machine that wrote this report; fp32 weights: 4 bytes per parameter, what an exported model holds; "
            "checkpoint file: the run's `.ckpt` (optimizer state included; teacher weights are never stored in a "
            "student's checkpoint). Ratios are the teacher's value over the run's."
        ),
        Table(
            [
                {
                    "run": r.name,
                    "params": f"{measured[r.name].params / 1e6:.3f} M",
                    "params ratio": _ratio(reference.params, measured[r.name].params) if reference else "–",
                    "MFLOPs": f"{measured[r.name].flops / 1e6:.1f}",
                    "FLOPs ratio": _ratio(reference.flops, measured[r.name].flops) if reference else "–",
                    "latency": f"{measured[r.name].latency_ms:.2f} ms",
                    "speed-up": _ratio(reference.latency_ms, measured[r.name].latency_ms) if reference else "–",
                    "fp32 weights": f"{4 * measured[r.name].params / 2**20:.2f} MB",
                    "checkpoint file": f"{measured[r.name].checkpoint_mb:.2f} MB",
                    "size ratio": _ratio(reference.checkpoint_mb, measured[r.name].checkpoint_mb) if reference else "–",
                }
                for r in runs
            ]
        ),
    ]

    students = [r for r in runs if r.role != "teacher" and (measured[r.name].saliency or measured[r.name].attention)]
    if students:
        blocks += [
            Heading("Agreement with the teacher (test images)"),
            Paragraph(
                "Grad-CAM of the teacher and of each student for the same target (the teacher's prediction) on the "
                "same test images; definitions in docs/metrics.md. Higher is closer to the teacher for every column "
                "but `kld` (0 = same). `pointing_game_*`: fraction of maps whose peak falls on the object."
            ),
            Table(
                [
                    {"student": r.name, **{k: f"{v:.3f}" for k, v in measured[r.name].saliency.items()}}
                    for r in students
                    if measured[r.name].saliency
                ]
            ),
            Paragraph(
                "Attention-map cosine (`at_cosine`, 1 = same map) and debiased linear CKA (`cka`) of the features "
                "at matched stages:"
            ),
            Table(
                [
                    {"student": r.name, **{k: f"{v:.3f}" for k, v in measured[r.name].attention.items()}}
                    for r in students
                    if measured[r.name].attention
                ]
            ),
        ]

    several = [r for r in runs if measured[r.name].teachers]
    if several:
        blocks += [
            Heading(f"Agreement with each teacher{'' if heads else ' and with their ensemble'} (test images)"),
            Paragraph(
                "Share of test predictions (the top class of each image, or of each pixel for segmentation) that "
                "each student shares with each teacher (by id) and with the teachers' weighted ensemble (the top "
                "class of their weighted average of probabilities at T = 1, the soft target of ensemble KD), in %."
                + (" A multi-task student is compared head by head, each teacher with its head." if heads else "")
            ),
            Table(
                [
                    {"student": r.name, **{k: f"{100 * v:.1f}" for k, v in measured[r.name].teachers.items()}}
                    for r in several
                ]
            ),
        ]
    blocks += list(sections)
    blocks += _curve_blocks(runs, out)
    for family, keys in per_class_families(measured, heads).items():
        blocks += [
            Heading(f"Per-class `{family}` (test)", 3),
            Table(
                [
                    {
                        "run": r.name,
                        **{
                            k.rsplit("/", 1)[-1]: format_value(k, measured[r.name].test.get(k, float("nan")))
                            for k in keys
                        },
                    }
                    for r in runs
                ]
            ),
        ]
    blocks += _saliency_blocks(runs, out)
    return blocks


def _distillation_terms(run: Run) -> list[str]:
    terms = []
    for callback in run.callbacks():
        path = str(callback.get("class_path", ""))
        if path.startswith("visiondistill.distill."):
            weight = (callback.get("init_args") or {}).get("weight")
            terms.append(path.rsplit(".", 1)[-1] + (f" (w={weight:g})" if isinstance(weight, int | float) else ""))
    return terms


def _test_key(monitor: str | None) -> str:
    return "test/" + monitor.split("/", 1)[1] if monitor and "/" in monitor else "test/loss"


def _curve_blocks(runs: Sequence[Run], out: Path) -> list[Block]:
    tags = sorted({tag for run in runs for tag in run.scalars})
    monitor = runs[0].monitor[0]
    task_tags = [t for t in (monitor, "val/loss", "train/task_loss") if t]
    agreement_tags = [t for t in tags if t.startswith(("val/saliency/", "val/attention/")) and "distance" not in t]
    agreement_tags = [
        t
        for t in agreement_tags
        if t.rsplit("/", 1)[-1] in ("pearson", "topk_iou") or "/at_cosine/" in t or "/cka/" in t or "pointing_game" in t
    ]
    distill_tags = [t for t in tags if t.startswith("train/distill/") and not t.endswith("_step")]
    weight_tags = [t for t in tags if t.startswith("train/weight/")]
    plots = (
        ("curves_task.png", task_tags, "Task metric and losses per epoch (validation)"),
        ("curves_agreement.png", agreement_tags, "Agreement with the teacher per epoch (probe batch)"),
        ("curves_distillation.png", distill_tags + weight_tags, "Distillation terms per epoch"),
    )
    blocks: list[Block] = []
    for name, group, title in plots:
        if plot_curves(runs, group, out / name, title) is not None:
            blocks.append(Image(name, title))
    return [Heading("Curves"), *blocks] if blocks else []


def _unread_curve_blocks(runs: Sequence[Run]) -> list[Block]:
    """What the report could not plot, in the report and on stderr (a curve left out must not go unnoticed)."""
    lines = [f"{run.name}: {item}" for run in runs for item in run.unreadable]
    for line in lines:
        print(f"visiondistill report: could not read the curves of {line}", file=sys.stderr)
    if not lines:
        return []
    return [Heading("Curves not read"), Paragraph("The curves above leave out: " + "; ".join(lines) + ".")]


def _saliency_blocks(runs: Sequence[Run], out: Path) -> list[Block]:
    blocks: list[Block] = []
    for run in runs:
        grids = sorted(run.path.glob("saliency/epoch_*/grid.png"))
        if not grids:
            continue
        name = f"saliency_{run.name}.png"
        shutil.copyfile(grids[-1], out / name)
        blocks.append(Image(name, f"{run.name}: input | teacher CAM | student CAM, {grids[-1].parent.name}"))
    return [Heading("Saliency maps (last logged epoch)"), *blocks] if blocks else []


def write_report(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    num_images: int = 32,
    data_dir: str | None = None,
    model_cards: bool = True,
    log: Any = print,
    explanations: ExplanationSettings | bool = True,
    ceiling: str | Path | None = None,
) -> tuple[Path, Path]:
    """Measures the runs and writes ``report.md`` and ``report.html`` (and model cards) into ``out``.

    Args:
        run_dirs: Run folders (teacher, scratch and distilled students, in any order).
        out: Output folder.
        num_images: Test images of the agreement measurement.
        data_dir: Data folder replacing the one in the configs.
        model_cards: Also write ``MODEL_CARD_<run>.md`` into ``out`` for each distilled run.
        log: Where progress lines go.
        explanations: The explanation sections' settings (`ExplanationSettings`; ``True``: the defaults, ``False``:
            no explanation sections).
        ceiling: A second teacher run (another seed): the agreement ceiling of the explanation sections; default the
            teacher on mirrored inputs (classification).

    Returns:
        The Markdown and HTML paths.

    Raises:
        RunError: For a folder that is not a finished run, or runs of different tasks.
    """
    if not run_dirs:
        raise RunError("give at least one run folder")
    runs = assign_roles([read_run(path) for path in run_dirs])
    tasks = {run.task_class_path for run in runs}
    if len(tasks) > 1:
        raise RunError(f"the runs belong to different tasks ({', '.join(sorted(tasks))}); report one task at a time")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    datamodule = build_datamodule(runs[0], data_dir)
    modules: dict[str, Any] = {}
    measured = measure_runs(
        runs, num_images=num_images, data_dir=data_dir, log=log, modules=modules, datamodule=datamodule
    )
    context = SectionContext(runs, modules, datamodule, probe_batch(datamodule, num_images), measured, out, log)
    test_size = len(datamodule.test_dataloader().dataset)
    sections = task_sections(context)
    if explanations is not False:
        settings = explanations if isinstance(explanations, ExplanationSettings) else ExplanationSettings()
        second = None
        if ceiling is not None:
            ceiling_run = read_run(ceiling)
            second = (ceiling_run.name, load_run_module(ceiling_run).student)
        sections += explanation_sections(context, settings, second)
    heads = tuple(getattr(modules[runs[0].name], "heads", ()))
    blocks = build_report(runs, measured, out, sections=sections, test_size=test_size, heads=heads)
    blocks += _unread_curve_blocks(runs)
    if model_cards:
        teacher = next((run for run in runs if run.role == "teacher"), None)
        cards = []
        for run in runs:
            if run.role == "distilled":
                card = write_model_card(run, measured, teacher, out, data_dir=data_dir, heads=heads)
                cards.append(f"`{card}`")
        if cards:
            blocks.append(Paragraph("Model cards: " + ", ".join(cards) + "."))
    markdown, page = out / "report.md", out / "report.html"
    markdown.write_text(to_markdown(blocks))
    page.write_text(to_html(blocks, out, title=f"visiondistill report — {runs[0].task}"))
    log(f"report: {markdown} and {page}")
    return markdown, page


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``visiondistill report``."""
    parser = argparse.ArgumentParser(prog="visiondistill report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders (teacher, scratch and distilled students)")
    parser.add_argument("--out", default=None, help="output folder (default: <parent of the first run>/report)")
    parser.add_argument("--num-images", type=int, default=32, help="test images of the agreement measurement")
    parser.add_argument("--data-dir", default=None, help="data folder replacing the one in the run configs")
    parser.add_argument("--no-model-card", action="store_true", help="do not write MODEL_CARD.md files")
    parser.add_argument(
        "--explain-methods",
        default="gradcam,integrated_gradients",
        help="comma-separated explanation methods of the explanation sections: grad-cam names and "
        "integrated_gradients, occlusion, kernel_shap, lime (default: %(default)s)",
    )
    parser.add_argument(
        "--explain-images", type=int, default=16, help="test images of faithfulness, sanity and robustness"
    )
    parser.add_argument("--no-explanations", action="store_true", help="leave out the explanation sections")
    parser.add_argument("--ceiling", default=None, help="a second teacher run (another seed): the agreement ceiling")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.runs[0]).parent / "report"
    try:
        methods = tuple(m.strip() for m in args.explain_methods.split(",") if m.strip())
        settings = ExplanationSettings(methods=methods, images=args.explain_images)  # fails before any measuring
        write_report(
            args.runs,
            out,
            args.num_images,
            args.data_dir,
            model_cards=not args.no_model_card,
            explanations=False if args.no_explanations else settings,
            ceiling=args.ceiling,
        )
    except (RunError, ConfigError) as error:
        print(f"visiondistill report: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
