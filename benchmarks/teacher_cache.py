"""What does the teacher-output cache save, and what does it cost in accuracy?

In one process, on the synthetic shapes (classification), CPU by default:

Timing (``--time-size`` px, the same datamodule with ``--views`` replayable views and the same batches for all three):
  (a) a student-only epoch (a `ClassificationTask` without teacher),
  (b) an online KD epoch (`LogitDistillation`, the teacher runs every step),
  (c) a cached KD epoch (`LogitDistillation` + `TeacherOutputCache` filled beforehand: no teacher forward),
each the median of ``--rounds`` alternating rounds, and prints ``c / a`` (target <= 1.10 on a CPU) and ``c / b``. The
pre-pass (`TeacherOutputCache.fill`: the teacher on every image x view) is timed too. Epochs include data loading
(``num_workers: 0``, the same work in all three).

Accuracy (``--acc-size`` px): a teacher is trained first (``--teacher-epochs``), then the student (``--epochs``) with
online KD (fresh augmentation every step, ``num_views: null``) and with cached KD (``--views`` replayable views, the
teacher's logits from the cache, filled on first sight), over ``--seeds`` seeds (the networks' initialisation; the
generated data, its order and its views stay those of data seed 0); prints the final validation top-1
accuracy as mean ± std, with a from-scratch student beside them, and each mode's mean training epoch (validation
excluded) with the cached/online and cached/student-only ratios. ``--teacher-weights`` loads a teacher trained by an
earlier run (its ``teacher_<size>px.pt``). Settings whose teacher learns on a 2-core CPU: see docs/speed.md.

    python benchmarks/teacher_cache.py [--data-dir data/bench_teacher_cache] [--teacher resnet18]
        [--student test_resnet] [--views 4] [--time-size 64] [--acc-size 32] [--epochs 6] [--seeds 0 1 2]
        [--difficulty 0.5] [--teacher-epochs 8] [--teacher-lr 3e-3] [--teacher-batch-size 64] [--lr 3e-3]
        [--teacher-weights PATH] [--skip-timing] [--skip-accuracy] [--no-scratch] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import pytorch_lightning as pl
import torch

from visiondistill.data import ShapesClassification
from visiondistill.distill import LogitDistillation, TeacherOutputCache
from visiondistill.tasks import ClassificationTask

from _common import quiet_trainer

warnings.filterwarnings("ignore")


class EpochTimer(pl.Callback):
    """Wall time of every training epoch, without its validation (which Lightning runs before the epoch's end)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def _stop(self) -> None:
        if self._start is not None:
            self.times.append(time.perf_counter() - self._start)
            self._start = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self._stop()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop()


def trainer(max_epochs: int, callbacks: list, validate: bool) -> pl.Trainer:
    return quiet_trainer(callbacks, max_epochs=max_epochs, limit_val_batches=1.0 if validate else 0)


def datamodule(
    args: argparse.Namespace, size: int, num_views: int | None, seed: int = 0, num_train: int | None = None
) -> ShapesClassification:
    num_train = num_train or args.num_train
    module = ShapesClassification(
        f"{args.data_dir}/{size}px-{num_train}-d{args.difficulty:g}",
        image_size=size,
        batch_size=args.batch_size,
        num_workers=0,
        num_train=num_train,
        num_val=args.num_val,
        num_test=0,
        difficulty=args.difficulty,
        seed=seed,
        num_views=num_views,
        verify_images=False,
    )
    module.prepare_data()
    module.setup("fit")
    return module


def task(args: argparse.Namespace, teacher: dict | None, seed: int) -> ClassificationTask:
    pl.seed_everything(seed, verbose=False)
    return ClassificationTask(
        student={"name": args.student}, teacher=teacher, num_classes=6, lr=args.lr, weight_decay=0.05, warmup_epochs=1
    )


def timing(args: argparse.Namespace) -> None:
    data = datamodule(args, args.time_size, args.views, num_train=args.time_train)
    teacher = {"name": args.teacher}
    cache = TeacherOutputCache()
    model = task(args, teacher, 0)
    start = time.perf_counter()
    filled = cache.fill(model.teacher, data.train_dataset, batch_size=args.batch_size)
    prepass = time.perf_counter() - start
    epochs: dict[str, list[float]] = {"student": [], "online": [], "cached": []}
    for _ in range(args.rounds):
        for mode in epochs:
            timer = EpochTimer()
            callbacks = {"student": [], "online": [LogitDistillation()], "cached": [LogitDistillation(), cache]}[mode]
            module = task(args, None if mode == "student" else teacher, 0)
            if mode == "cached":
                module.teacher.load_state_dict(model.teacher.state_dict())  # the teacher the cache was filled with
            trainer(args.timed_epochs, [*callbacks, timer], validate=False).fit(module, datamodule=data)
            epochs[mode] += timer.times[1:]  # the first epoch warms up allocators and caches
    a, b, c = (statistics.median(epochs[mode]) for mode in ("student", "online", "cached"))
    print(
        f"\n== timing: {args.student} <- {args.teacher}, {args.time_size} px, {args.time_train} images, batch "
        f"{args.batch_size}, {args.views} views, {torch.get_num_threads()} threads, median of "
        f"{len(epochs['student'])} epochs per mode =="
    )
    print(f"(a) student-only epoch   {a:7.2f} s")
    print(f"(b) online KD epoch      {b:7.2f} s")
    print(f"(c) cached KD epoch      {c:7.2f} s   steps without a teacher forward: {cache.cached_steps}")
    print(f"pre-pass (cache-teacher) {prepass:7.2f} s   ({filled} image x view outputs)")
    print(f"c / a = {c / a:.3f} (target <= 1.10)    c / b = {c / b:.3f}")


def accuracy(args: argparse.Namespace) -> None:
    size = args.acc_size
    start = time.perf_counter()
    pl.seed_everything(0, verbose=False)
    teacher_run = ClassificationTask(
        student={"name": args.teacher}, num_classes=6, lr=args.teacher_lr, weight_decay=0.05, warmup_epochs=1
    )
    weights = f"{args.data_dir}/teacher_{size}px.pt"
    if args.teacher_weights:  # a teacher this script trained before (its teacher_<size>px.pt), not trained again
        teacher_run.student.load_state_dict(torch.load(args.teacher_weights, weights_only=True))
        weights = args.teacher_weights
    else:
        teacher_data = datamodule(args, size, None)
        teacher_data.batch_size = args.teacher_batch_size
        trainer(args.teacher_epochs, [], validate=False).fit(teacher_run, datamodule=teacher_data)
        torch.save(teacher_run.student.state_dict(), weights)
    teacher_time = time.perf_counter() - start
    print(
        f"\n== accuracy: {args.student} <- {args.teacher} at {size} px, {args.num_train} images, difficulty "
        f"{args.difficulty:g}, {args.epochs} student epochs (lr {args.lr:g}, batch {args.batch_size}), teacher "
        + (
            f"loaded from {args.teacher_weights}, "
            if args.teacher_weights
            else f"{args.teacher_epochs} epochs (lr {args.teacher_lr:g}, batch {args.teacher_batch_size}, "
            f"{teacher_time:.0f} s), "
        )
        + f"K = {args.views}, seeds {args.seeds}, {torch.get_num_threads()} threads =="
    )
    scores: dict[str, list[float]] = {"teacher": [], "scratch": [], "online KD": [], "cached KD": []}
    epoch_times: dict[str, list[float]] = {"scratch": [], "online KD": [], "cached KD": []}
    check = trainer(1, [], validate=True)
    check.validate(teacher_run, datamodule=datamodule(args, size, None), verbose=False)
    scores["teacher"].append(float(check.callback_metrics["val/acc_top1"]))
    print(f"  teacher {scores['teacher'][-1]:.4f}", flush=True)
    for seed in args.seeds:
        for mode in ("online KD", "cached KD") if args.no_scratch else ("scratch", "online KD", "cached KD"):
            module = task(args, None if mode == "scratch" else {"name": args.teacher}, seed)
            if module.teacher is not None:
                module.teacher.load_state_dict(torch.load(weights, weights_only=True))
            callbacks = {"scratch": [], "online KD": [LogitDistillation()]}.get(mode)
            cache = TeacherOutputCache()
            callbacks = [LogitDistillation(), cache] if callbacks is None else callbacks
            views = args.views if mode == "cached KD" else None
            timer = EpochTimer()
            fit = trainer(args.epochs, [*callbacks, timer], validate=True)
            fit.fit(module, datamodule=datamodule(args, size, views))  # the seed varies the networks' initialisation
            scores[mode].append(float(fit.callback_metrics["val/acc_top1"]))
            epoch_times[mode] += timer.times  # training epochs only (the timer stops before validation)
            extra = f" (teacher: {cache.teacher_images} images, {cache.teacher_forwards} of {fit.global_step} steps)"
            print(
                f"  seed {seed} {mode:<10} {scores[mode][-1]:.4f}  mean epoch {statistics.mean(timer.times):.1f} s"
                f"{extra if mode == 'cached KD' else ''}",
                flush=True,
            )
    print("\n| run | val top-1 (mean ± std) |\n|---|---|")
    for mode, values in scores.items():
        if not values:
            continue
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {mode} | {statistics.mean(values):.4f} ± {spread:.4f} (n={len(values)}) |")
    means = {mode: statistics.mean(times) for mode, times in epoch_times.items() if times}
    print("\n| run | mean training epoch (all seeds) |\n|---|---|")
    for mode, value in means.items():
        print(f"| {mode} | {value:.2f} s |")
    if "cached KD" in means and "online KD" in means:
        ratios = f"cached / online = {means['cached KD'] / means['online KD']:.3f}"
        if "scratch" in means:
            ratios += f", cached / student-only = {means['cached KD'] / means['scratch']:.3f}"
        print(ratios + " (the cache fills on first sight: its first epochs still run the teacher on new views)")
    print(f"accuracy part: {time.perf_counter() - start:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data/bench_teacher_cache")
    parser.add_argument("--teacher", default="resnet18")
    parser.add_argument("--student", default="test_resnet")
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--num-train", type=int, default=384, help="training images of the accuracy runs")
    parser.add_argument("--time-train", type=int, default=256, help="training images of the timed epochs")
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--time-size", type=int, default=64)
    parser.add_argument("--timed-epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--acc-size", type=int, default=32)
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--teacher-lr", type=float, default=3e-3)
    parser.add_argument("--teacher-weights", default=None, help="load this teacher_<size>px.pt instead of training")
    parser.add_argument("--teacher-batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3, help="the students' peak learning rate")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--difficulty", type=float, default=0.5, help="shapes generator difficulty (1: benchmark)")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--no-scratch", action="store_true", help="no from-scratch student in the accuracy part")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if not args.skip_timing:
        timing(args)
    if not args.skip_accuracy:
        accuracy(args)
    print(f"\ntotal: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
