"""Data-free distillation on the shapes: how much of KD-on-real-data does DeepInversion recover? Three arms.

One teacher is trained on the real shapes training split (seed 0). Then, for each seed, a student of the same small
architecture is scored on the held-out test split (top-1 accuracy) after:

  scratch, no data  no training at all (there are no images to train on): chance, the floor;
  data-free KD      the same number of optimiser steps on DeepInversion batches synthesised from the teacher
                    (`DataFreeClassification`, task_weight 0: the logit KD term alone teaches);
  KD, real data     the same number of steps on the real training images, cross-entropy + logit KD.

Prints mean ± std over the seeds and the command that reproduced it. Each data-free step costs ``--iterations``
teacher forward+backward passes on top of the student's step.

    python benchmarks/data_free.py [--seeds 0 1 2] [--steps 150] [--iterations 100] [--image-size 32]
        [--teacher-epochs 8] [--data-dir /tmp/visiondistill-datafree] [--threads 1]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

from visiondistill.data import DataFreeClassification, ShapesClassification
from visiondistill.distill import LogitDistillation
from visiondistill.tasks import ClassificationTask

warnings.filterwarnings("ignore")

ARMS = ("scratch, no data", "data-free KD", "KD, real data")
STUDENT = {"name": "test_resnet"}
TEACHER = {"name": "resnet18"}


def trainer(steps: int | None = None, epochs: int | None = None, callbacks: list | None = None) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps if steps is not None else -1,
        max_epochs=epochs,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks or [],
    )


def shapes(args: argparse.Namespace) -> ShapesClassification:
    return ShapesClassification(
        str(Path(args.data_dir) / "shapes"),
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_workers=0,
        num_train=args.num_train,
        num_val=50,
        num_test=args.num_test,
        difficulty=args.difficulty,
    )


def train_teacher(args: argparse.Namespace) -> Path:
    path = Path(args.data_dir) / f"teacher_{args.image_size}px.ckpt"
    if path.is_file():
        return path
    pl.seed_everything(0, workers=True)
    task = ClassificationTask(student=TEACHER, num_classes=6, lr=0.002, warmup_epochs=0.5)
    fit = trainer(epochs=args.teacher_epochs)
    fit.fit(task, shapes(args))
    fit.save_checkpoint(path)
    return path


def test_accuracy(task: ClassificationTask, args: argparse.Namespace) -> float:
    result = trainer().test(task, shapes(args), verbose=False)
    return float(result[0]["test/acc_top1"])


def run_student(arm: str, teacher: Path, seed: int, args: argparse.Namespace) -> float:
    pl.seed_everything(seed, workers=True)
    if arm == ARMS[0]:
        return test_accuracy(ClassificationTask(student=STUDENT, num_classes=6), args)
    data_free = arm == ARMS[1]
    task = ClassificationTask(
        student=STUDENT,
        teacher={"checkpoint": str(teacher)},
        num_classes=6,
        lr=0.003,
        warmup_epochs=0.1,
        task_weight=0.0 if data_free else 1.0,
    )
    if data_free:
        data = DataFreeClassification(
            num_classes=6,
            image_size=args.image_size,
            batch_size=args.batch_size,
            batches_per_epoch=args.steps,
            iterations=args.iterations,
            seed=seed,
            save_grid=False,
        )
    else:
        data = shapes(args)
    trainer(steps=args.steps, callbacks=[LogitDistillation(temperature=4.0)]).fit(task, data)
    return test_accuracy(task, args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps of every trained student")
    parser.add_argument("--iterations", type=int, default=100, help="DeepInversion steps per synthesised batch")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-train", type=int, default=1200)
    parser.add_argument("--num-test", type=int, default=300)
    parser.add_argument("--difficulty", type=float, default=0.0)
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--data-dir", default="/tmp/visiondistill-datafree")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: no spinning when busy)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    teacher = train_teacher(args)
    teacher_task = ClassificationTask(student=TEACHER, num_classes=6)
    teacher_task.load_state_dict(torch.load(teacher, weights_only=True)["state_dict"])
    teacher_score = test_accuracy(teacher_task, args)
    scores: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for seed in args.seeds:
        for arm in ARMS:
            scores[arm].append(run_student(arm, teacher, seed, args))
            print(f"seed {seed} {arm}: {scores[arm][-1]:.4f}", flush=True)
    print(f"\n{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}); {time.perf_counter() - start:.0f} s\n")
    print("| teacher (real data) | " + " | ".join(ARMS) + " |")
    print("| --- " * (len(ARMS) + 1) + "|")
    cells = []
    for arm in ARMS:
        values = [100 * v for v in scores[arm]]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
    print(f"| {100 * teacher_score:.1f} | " + " | ".join(cells) + " |")
    print("\ncommand: python " + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
