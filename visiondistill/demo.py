"""``make demo``: train a teacher, a student from scratch and a distilled student, then compare them.

Each training run is an ordinary ``visiondistill fit --config …`` call (shown before it starts), so
what the demo does can be repeated by hand run by run. The comparison is written to
``runs/demo/<task>/report.md``.

Usage::

    python -m visiondistill.demo --task classification [--epochs N] [--skip-existing]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml


@dataclass(frozen=True)
class DemoRun:
    """One training run of the demo: a row of the report."""

    label: str
    config: str
    name: str  # run folder under <runs>/<task>/
    distilled: bool = False


@dataclass(frozen=True)
class DemoSettings:
    """Where the demo writes, and the command-line overrides applied to every run."""

    runs: Path
    data_dir: Path
    out: Path
    overrides: tuple[str, ...] = ()
    data_overrides: dict = field(default_factory=dict)
    skip_existing: bool = False

    def run_dir(self, task: str, run: DemoRun) -> Path:
        """The folder of one run."""
        return self.runs / task / run.name

    def checkpoint(self, task: str, run: DemoRun) -> Path:
        """The best checkpoint of one run."""
        return self.run_dir(task, run) / "checkpoints" / "best.ckpt"


#: A seconds-long version of every run, for smoke tests and for trying the pipeline out.
QUICK_OVERRIDES = ("--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1")
QUICK_DATA = {"image_size": 32, "num_train": 48, "num_val": 16, "num_test": 16, "batch_size": 8, "num_workers": 0}

#: Images and feature stage of the report's teacher-agreement measurement (the stage before last keeps a 4×4
#: map at 64 px, where the last stage is only 2×2).
AGREEMENT_IMAGES = 64
AGREEMENT_LAYERS = (-2,)
ATTENTION_LAYERS = (-3, -2, -1)

CLASSIFICATION_RUNS = (
    DemoRun("teacher (resnet18)", "configs/classification/shapes_teacher.yaml", "teacher"),
    DemoRun("student, scratch (test_resnet)", "configs/classification/shapes_student_scratch.yaml", "student_scratch"),
    DemoRun("student, distilled KD+AT (test_resnet)", "configs/classification/shapes_kd.yaml", "student_kd", True),
)


def _fit(task: str, run: DemoRun, teacher: DemoRun, settings: DemoSettings) -> float:
    checkpoint = settings.checkpoint(task, run)
    if settings.skip_existing and checkpoint.is_file():
        print(f"\n== {run.label}: reusing {checkpoint}", flush=True)
        return 0.0
    command = [sys.executable, "-m", "visiondistill.cli", "fit", "--config", run.config]
    command += [
        f"--trainer.logger.init_args.save_dir={settings.runs / task}",
        f"--data.init_args.data_dir={settings.data_dir}",
    ]
    command += [f"--data.init_args.{key}={value}" for key, value in settings.data_overrides.items()]
    if run.distilled:
        command.append(f"--model.init_args.teacher.checkpoint={settings.checkpoint(task, teacher)}")
    command += settings.overrides
    shown = "visiondistill " + " ".join(shlex.quote(part) for part in command[3:])
    print(f"\n== {run.label}\n$ {shown}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def _data_args(config: str, settings: DemoSettings) -> dict:
    with open(config) as handle:
        args = dict(yaml.safe_load(handle)["data"]["init_args"])
    return {**args, "data_dir": str(settings.data_dir), **settings.data_overrides}


def run_classification(settings: DemoSettings) -> Path:
    """Trains the three classification runs, evaluates them on the test split and writes the report."""
    from visiondistill.data import ShapesClassification
    from visiondistill.evaluation import (
        evaluate_classifier,
        load_student,
        markdown_table,
        teacher_agreement,
    )
    from visiondistill.explain.agreement import attention_teacher_agreement

    task, runs = "classification", CLASSIFICATION_RUNS
    data_args = _data_args(runs[0].config, settings)
    datamodule = ShapesClassification(**data_args)
    print(f"== data: synthetic shapes under {data_args['data_dir']} (generated on first use)", flush=True)
    datamodule.prepare_data()

    train_seconds = {run.label: _fit(task, run, runs[0], settings) for run in runs}

    datamodule.setup("test")
    models = {run.label: load_student(settings.checkpoint(task, run))[0] for run in runs}
    reports = [
        evaluate_classifier(
            run.label,
            models[run.label],
            datamodule.test_dataloader(),
            datamodule.class_names,
            checkpoint_path=settings.checkpoint(task, run),
        )
        for run in runs
    ]
    teacher, scratch, distilled = reports
    probe = torch.cat([images for images, _ in datamodule.test_dataloader()])[:AGREEMENT_IMAGES]
    agreement = {
        report.name: teacher_agreement(
            models[teacher.name],
            models[report.name],
            probe,
            teacher_layers=AGREEMENT_LAYERS,
            student_layers=AGREEMENT_LAYERS,
        )
        for report in (scratch, distilled)
    }
    attention = {
        report.name: attention_teacher_agreement(
            models[teacher.name],
            models[report.name],
            probe,
            teacher_layers=ATTENTION_LAYERS,
            student_layers=ATTENTION_LAYERS,
        )
        for report in (scratch, distilled)
    }
    gain = 100 * (distilled.top1 - scratch.top1)
    rows = [
        {
            "model": r.name,
            "top-1 (test)": f"{100 * r.top1:.1f}%",
            "top-5": f"{100 * r.top5:.1f}%" if r.top5 is not None else "–",
            "params": f"{r.params / 1e6:.2f} M",
            "compression": f"{teacher.params / r.params:.1f}×",
            "MFLOPs": f"{r.flops / 1e6:.1f}",
            "CPU latency / image": f"{r.latency_ms:.2f} ms",
            "train time": f"{train_seconds[r.name]:.0f} s" if train_seconds[r.name] else "reused",
            "CAM pearson vs teacher": f"{agreement[r.name]['pearson']:.3f}" if r.name in agreement else "–",
            "CAM top-10% IoU vs teacher": f"{agreement[r.name]['topk_iou']:.3f}" if r.name in agreement else "–",
        }
        for r in reports
    ]
    per_class = [{"model": r.name, **{c: f"{100 * v:.0f}%" for c, v in r.per_class.items()}} for r in reports]
    table = markdown_table(rows)
    distilled_dir = settings.run_dir(task, runs[2])
    text = "\n\n".join(
        [
            "# visiondistill demo — classification on synthetic shapes",
            f"Held-out test split: {len(datamodule.test_dataloader().dataset)} images, "
            f"{len(datamodule.class_names)} classes. Latency: batch 1, CPU, median of 50 runs.",
            table,
            f"Distillation changed the student's top-1 by {gain:+.1f} points over training from scratch "
            f"(teacher: {100 * teacher.top1:.1f}%).",
            "## Does the student look where the teacher looks?",
            f"Grad-CAM of the teacher and of each student at feature stage {AGREEMENT_LAYERS[0]}, on the first "
            f"{len(probe)} test images, all explaining the teacher's prediction (definitions in DESIGN.md).",
            markdown_table(
                [{"student": name, **{k: f"{v:.3f}" for k, v in values.items()}} for name, values in agreement.items()]
            ),
            "Higher is closer to the teacher for every column but `kld` (0 = same distribution). At 64 px these "
            "CAMs are 4×4 maps, so they are coarse and noisy; the attention maps and features below are the steadier "
            "signal.",
            f"Attention-map cosine (`at_cosine`) and debiased linear CKA of the features at stages "
            f"{', '.join(str(layer) for layer in ATTENTION_LAYERS)}, same images:",
            markdown_table(
                [{"student": name, **{k: f"{v:.3f}" for k, v in values.items()}} for name, values in attention.items()]
            ),
            "Per-epoch agreement of the distilled run (Grad-CAM and attention maps on a fixed probe batch) is in "
            "TensorBoard under `val/saliency/*` and `val/attention/*`, and as PNG grids and `maps.npz` under "
            f"`{distilled_dir}/saliency/` (open them with `notebooks/inspect_saliency.ipynb`).",
            "## Per-class accuracy (test)",
            markdown_table(per_class),
            "Runs: "
            + ", ".join(f"`{settings.run_dir(task, run)}`" for run in runs)
            + f" (TensorBoard: `tensorboard --logdir {settings.runs / task}`).",
        ]
    )
    out = settings.out / task
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.md"
    report.write_text(text + "\n")
    print("\n" + table + f"\n\nDistilled vs scratch: {gain:+.1f} top-1 points. Report: {report}", flush=True)
    return report


TASKS = {"classification": run_classification}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the demo for one task or all tasks."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="all", choices=[*TASKS, "all"])
    parser.add_argument("--epochs", type=int, default=None, help="override every run's max_epochs")
    parser.add_argument("--runs", default="runs", help="root of the run folders")
    parser.add_argument("--data-dir", default="data/shapes", help="where the synthetic data set is generated")
    parser.add_argument("--out", default="runs/demo", help="where the reports go")
    parser.add_argument("--skip-existing", action="store_true", help="reuse runs that already have a checkpoint")
    parser.add_argument("--quick", action="store_true", help="seconds-long runs on tiny data: checks the pipeline")
    args = parser.parse_args(argv)
    overrides = QUICK_OVERRIDES if args.quick else ()
    if args.epochs is not None:
        overrides = (*overrides, f"--trainer.max_epochs={args.epochs}")
    settings = DemoSettings(
        runs=Path(args.runs),
        data_dir=Path(args.data_dir),
        out=Path(args.out),
        overrides=overrides,
        data_overrides=QUICK_DATA if args.quick else {},
        skip_existing=args.skip_existing,
    )
    tasks = list(TASKS) if args.task == "all" else [args.task]
    for task in tasks:
        TASKS[task](settings)
        write_run_reports(task, settings)
    return 0


def write_run_reports(task: str, settings: DemoSettings) -> list[Path]:
    """``visiondistill report`` over the task's runs: one HTML + Markdown report per data set with a teacher run."""
    from visiondistill.reporting import RunError, write_report
    from visiondistill.reporting.runs import run_folders_by_data

    reports = []
    comparable = [folders for folders in run_folders_by_data(settings.runs / task) if len(folders) > 1]
    for index, folders in enumerate(comparable):
        out = settings.out / task / ("run_report" if index == 0 else f"run_report_{index}")
        shown = " ".join(shlex.quote(str(folder)) for folder in folders)
        print(f"\n== run report\n$ visiondistill report {shown} --out {out}", flush=True)
        try:
            reports.append(write_report(folders, out)[1])
        except RunError as error:
            print(f"   no run report: {error}", flush=True)
    return reports


# -- segmentation section (visiondistill/demo_segmentation.py); imported when run, as it imports this module --


def _run_segmentation(settings: DemoSettings) -> Path:
    from visiondistill.demo_segmentation import run_segmentation

    return run_segmentation(settings)


TASKS["segmentation"] = _run_segmentation


# -- keypoint section (visiondistill/demo_keypoints.py); imported when run, as it imports this module --


def _run_keypoints(settings: DemoSettings) -> Path:
    from visiondistill.demo_keypoints import run_keypoints

    return run_keypoints(settings)


TASKS["keypoints"] = _run_keypoints


# -- detection section (visiondistill/demo_detection.py); imported when run, as it imports this module --


def _run_detection(settings: DemoSettings) -> Path:
    from visiondistill.demo_detection import run_detection

    return run_detection(settings)


TASKS["detection"] = _run_detection


if __name__ == "__main__":
    sys.exit(main())
