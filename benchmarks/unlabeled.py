"""Does distilling on unlabeled images help when labels are scarce? Three arms at the same number of steps.

For each data set, one teacher is trained on **all** training labels (seed 0). Then, for each seed, a student of
the same small architecture is trained for the same number of optimiser steps in three ways:

  scratch         the labeled part alone (cross-entropy / segmentation loss), no teacher;
  KD, labels      the labeled part alone, plus the teacher's logit KD term;
  KD + unlabeled  labeled batches for the task loss, and labeled + unlabeled batches for the KD term (the rest of
                  the training split with its labels withheld: ``labeled_fraction``).

The labeled part is a stratified draw seeded by the run's seed (``labeled_seed``), so seeds differ in both the
initialisation and which images keep their labels. Students are scored on the held-out test split (shapes: top-1
accuracy; lesions: mean IoU over the 4 classes, background included). Prints mean ± std over the seeds and the
command that reproduced it.

With ``--lesion-kd-class-weights W0 W1 …`` the lesions get a fourth arm, ``KD + unlabeled, weighted``: the same as
``KD + unlabeled`` with the pixel KD term weighted by the class the teacher predicts at each pixel
(`PixelwiseDistillation(class_weights=…)`), against the pull of ~98 % background pixels.

    python benchmarks/unlabeled.py [--seeds 0 1 2] [--fraction 0.05] [--lesion-fraction 0.10] [--steps 100]
        [--lesion-steps 80] [--data-dir /tmp/visiondistill-unlabeled] [--only shapes|lesions] [--threads 1]
        [--lesion-kd-class-weights 1 10 10 20] [--arms scratch "KD + unlabeled, weighted"]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from visiondistill.data import ShapesClassification, SyntheticLesions
from visiondistill.distill import LogitDistillation, PixelwiseDistillation
from visiondistill.tasks import ClassificationTask, SegmentationTask

from _common import quiet_trainer

warnings.filterwarnings("ignore")

ARMS = ("scratch", "KD, labels", "KD + unlabeled")
WEIGHTED = "KD + unlabeled, weighted"
SHAPES_STUDENT = {"name": "test_resnet"}
LESION_STUDENT = {
    "arch": "Unet",
    "encoder_name": "tu-test_resnet",
    "in_channels": 1,
    "kwargs": {"decoder_channels": [32, 16, 16, 8, 8]},
}
LESION_TASK = {"num_classes": 4, "loss": "ce+dice", "class_weights": [1.0, 10.0, 10.0, 20.0], "lr": 0.005}


def trainer(steps: int | None = None, epochs: int | None = None, callbacks: list | None = None) -> pl.Trainer:
    return quiet_trainer(
        callbacks or [], max_steps=steps if steps is not None else -1, max_epochs=epochs, limit_val_batches=0
    )


def shapes_data(root: Path, fraction: float, seed: int) -> ShapesClassification:
    return ShapesClassification(
        str(root / "shapes"),
        image_size=32,
        batch_size=32,
        num_workers=0,
        num_train=1200,
        num_val=100,
        num_test=200,
        difficulty=0.5,
        labeled_fraction=fraction,
        labeled_seed=seed,
    )


def lesion_data(root: Path, fraction: float, seed: int) -> SyntheticLesions:
    return SyntheticLesions(
        str(root / "lesions"),
        image_size=64,
        batch_size=16,
        num_workers=0,
        num_train=320,
        num_val=40,
        num_test=80,
        labeled_fraction=fraction,
        labeled_seed=seed,
    )


def prepared(datamodule: Any, keep_unlabeled: bool) -> Any:
    datamodule.prepare_data()
    datamodule.setup("fit")
    if not keep_unlabeled:
        # The labels-alone arms train on the same labeled draw, with the withheld images left out altogether.
        datamodule.unlabeled_dataset = None
    return datamodule


def train_teacher(kind: str, root: Path, epochs: int) -> Path:
    path = root / f"teacher_{kind}.ckpt"
    if path.is_file():
        return path
    pl.seed_everything(0, workers=True)
    if kind == "shapes":
        data = prepared(shapes_data(root, 1.0, 0), keep_unlabeled=False)
        task = ClassificationTask(student=SHAPES_STUDENT, num_classes=6, lr=0.003, warmup_epochs=0.5)
    else:
        data = prepared(lesion_data(root, 1.0, 0), keep_unlabeled=False)
        task = SegmentationTask(student=LESION_STUDENT, warmup_epochs=0.5, **LESION_TASK)
    fit = trainer(epochs=epochs)
    fit.fit(task, data)
    fit.save_checkpoint(path)
    return path


def run_student(
    kind: str,
    arm: str,
    root: Path,
    teacher: Path,
    fraction: float,
    seed: int,
    steps: int,
    kd_class_weights: list[float] | None = None,
) -> float:
    pl.seed_everything(seed, workers=True)
    keep_unlabeled = arm in ("KD + unlabeled", WEIGHTED)
    teacher_spec = None if arm == "scratch" else {"checkpoint": str(teacher)}
    if kind == "shapes":
        data = prepared(shapes_data(root, fraction, seed), keep_unlabeled)
        spec = dict(SHAPES_STUDENT, **(teacher_spec or {})) if teacher_spec else None
        task = ClassificationTask(student=SHAPES_STUDENT, teacher=spec, num_classes=6, lr=0.003, warmup_epochs=0.1)
        callbacks = [LogitDistillation(temperature=4.0, weight=1.0)] if teacher_spec else []
        metric = "test/acc_top1"
    else:
        data = prepared(lesion_data(root, fraction, seed), keep_unlabeled)
        spec = dict(LESION_STUDENT, **(teacher_spec or {})) if teacher_spec else None
        task = SegmentationTask(student=LESION_STUDENT, teacher=spec, warmup_epochs=0.1, **LESION_TASK)
        weights = kd_class_weights if arm == WEIGHTED else None
        callbacks = [PixelwiseDistillation(temperature=1.0, weight=1.0, class_weights=weights)] if teacher_spec else []
        metric = "test/miou"
    fit = trainer(steps=steps, callbacks=callbacks)
    fit.fit(task, data)
    return float(fit.test(task, data, verbose=False)[0][metric])


def teacher_score(kind: str, root: Path, teacher: Path) -> float:
    if kind == "shapes":
        data, task = prepared(shapes_data(root, 1.0, 0), False), ClassificationTask(student=SHAPES_STUDENT)
        metric = "test/acc_top1"
    else:
        data, task = prepared(lesion_data(root, 1.0, 0), False), SegmentationTask(LESION_STUDENT, **LESION_TASK)
        metric = "test/miou"
    task.student.load_state_dict(
        {k.removeprefix("student."): v for k, v in torch.load(teacher, weights_only=False)["state_dict"].items()}
    )
    return float(trainer().test(task, data, verbose=False)[0][metric])


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fraction", type=float, default=0.05, help="labeled share of the shapes training split")
    parser.add_argument("--lesion-fraction", type=float, default=0.10, help="labeled share of the lesion masks")
    parser.add_argument("--steps", type=int, default=100, help="optimiser steps of every shapes student")
    parser.add_argument("--lesion-steps", type=int, default=80, help="optimiser steps of every lesion student")
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--lesion-teacher-epochs", type=int, default=10)
    parser.add_argument("--data-dir", default="/tmp/visiondistill-unlabeled")
    parser.add_argument("--only", choices=("shapes", "lesions"), default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: no spinning when busy)")
    parser.add_argument(
        "--lesion-kd-class-weights", type=float, nargs="+", default=None, help="adds the weighted lesion KD arm"
    )
    parser.add_argument("--arms", nargs="+", default=None, help="run only these arms (names as in the table)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(args.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    settings = {
        "shapes": (args.fraction, args.steps, args.teacher_epochs, "top-1 accuracy, %"),
        "lesions": (args.lesion_fraction, args.lesion_steps, args.lesion_teacher_epochs, "mean IoU, %"),
    }
    rows = []
    for kind, (fraction, steps, teacher_epochs, metric) in settings.items():
        if args.only not in (None, kind):
            continue
        teacher = train_teacher(kind, root, teacher_epochs)
        arms = ARMS + ((WEIGHTED,) if kind == "lesions" and args.lesion_kd_class_weights else ())
        arms = tuple(arm for arm in arms if args.arms is None or arm in args.arms)
        scores = {arm: [] for arm in arms}
        for seed in args.seeds:
            for arm in arms:
                weights = args.lesion_kd_class_weights
                scores[arm].append(run_student(kind, arm, root, teacher, fraction, seed, steps, weights))
                print(f"{kind} seed {seed} {arm}: {scores[arm][-1]:.4f}", flush=True)
        rows.append((kind, fraction, metric, teacher_score(kind, root, teacher), scores))
    print(f"\n{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}); {time.perf_counter() - start:.0f} s\n")
    columns = ARMS + ((WEIGHTED,) if args.lesion_kd_class_weights else ())
    columns = tuple(arm for arm in columns if args.arms is None or arm in args.arms)
    print(f"| data (labels kept) | metric | teacher (all labels) | {' | '.join(columns)} |")
    print("| --- | --- | --- |" + " --- |" * len(columns))
    for kind, fraction, metric, teacher, scores in rows:
        cells = " | ".join(mean_std(scores[arm]) if arm in scores else "–" for arm in columns)
        print(f"| {kind} ({100 * fraction:g} %) | {metric} | {100 * teacher:.1f} | {cells} |")
    print("\ncommand: python benchmarks/unlabeled.py " + shlex.join(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
