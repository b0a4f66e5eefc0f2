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
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class DemoRun:
    """One training run of the demo: a row of the report."""

    label: str
    config: str
    run_dir: str


CLASSIFICATION_RUNS = (
    DemoRun("teacher (resnet18)", "configs/classification/shapes_teacher.yaml", "runs/classification/teacher"),
    DemoRun(
        "student, scratch (test_resnet)",
        "configs/classification/shapes_student_scratch.yaml",
        "runs/classification/student_scratch",
    ),
    DemoRun(
        "student, distilled KD+AT (test_resnet)",
        "configs/classification/shapes_kd.yaml",
        "runs/classification/student_kd",
    ),
)


def _fit(run: DemoRun, epochs: int | None, skip_existing: bool) -> float:
    checkpoint = Path(run.run_dir) / "checkpoints" / "best.ckpt"
    if skip_existing and checkpoint.is_file():
        print(f"\n== {run.label}: reusing {checkpoint}", flush=True)
        return 0.0
    command = [sys.executable, "-m", "visiondistill.cli", "fit", "--config", run.config]
    if epochs is not None:
        command += ["--trainer.max_epochs", str(epochs)]
    shown = "visiondistill " + " ".join(shlex.quote(part) for part in command[3:])
    print(f"\n== {run.label}\n$ {shown}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def _data_args(config: str) -> dict:
    with open(config) as handle:
        return dict(yaml.safe_load(handle)["data"]["init_args"])


def run_classification(out_dir: Path, epochs: int | None, skip_existing: bool) -> Path:
    """Trains the three classification runs, evaluates them on the test split and writes the report."""
    from visiondistill.data import ShapesClassification
    from visiondistill.evaluation import evaluate_classifier, load_student, markdown_table

    data_args = _data_args(CLASSIFICATION_RUNS[0].config)
    datamodule = ShapesClassification(**data_args)
    print(f"== data: synthetic shapes under {data_args['data_dir']} (generated on first use)", flush=True)
    datamodule.prepare_data()

    train_seconds = {run.label: _fit(run, epochs, skip_existing) for run in CLASSIFICATION_RUNS}

    datamodule.setup("test")
    reports = []
    for run in CLASSIFICATION_RUNS:
        checkpoint = Path(run.run_dir) / "checkpoints" / "best.ckpt"
        model, _ = load_student(checkpoint)
        reports.append(
            evaluate_classifier(
                run.label, model, datamodule.test_dataloader(), datamodule.class_names, checkpoint_path=checkpoint
            )
        )
    teacher = reports[0]
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
        }
        for r in reports
    ]
    per_class = [{"model": r.name, **{c: f"{100 * v:.0f}%" for c, v in r.per_class.items()}} for r in reports]
    table = markdown_table(rows)
    scratch, distilled = reports[1], reports[2]
    gain = 100 * (distilled.top1 - scratch.top1)
    text = "\n\n".join(
        [
            "# visiondistill demo — classification on synthetic shapes",
            f"Held-out test split: {len(datamodule.test_dataloader().dataset)} images, "
            f"{len(datamodule.class_names)} classes. Latency: batch 1, CPU, median of 50 runs.",
            table,
            f"Distillation changed the student's top-1 by {gain:+.1f} points over training from scratch "
            f"(teacher: {100 * teacher.top1:.1f}%).",
            "## Per-class accuracy (test)",
            markdown_table(per_class),
            "Runs: " + ", ".join(f"`{run.run_dir}`" for run in CLASSIFICATION_RUNS) + " (TensorBoard: "
            "`tensorboard --logdir runs/classification`).",
        ]
    )
    out = out_dir / "classification"
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
    parser.add_argument("--out", default="runs/demo", help="where the reports go")
    parser.add_argument("--skip-existing", action="store_true", help="reuse runs that already have a checkpoint")
    args = parser.parse_args(argv)
    tasks = list(TASKS) if args.task == "all" else [args.task]
    for task in tasks:
        TASKS[task](Path(args.out), args.epochs, args.skip_existing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
