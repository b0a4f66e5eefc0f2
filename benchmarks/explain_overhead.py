"""How much do the explanation callbacks slow training down at their default cadence?

Trains the same distilled student twice in one process, on the same shapes data, from the same seed, with the
KD callback (`LogitDistillation`) on in both runs:
  (a) without explanation callbacks,
  (b) with `GradCAMCallback` and `FeatureMapCallback` at their defaults (every epoch, 16 probe images, CAMs and
      attention maps of the last stage, PNG grids, TensorBoard images and ``maps.npz`` written each epoch),
and prints the median wall time of an epoch of each (training and validation, from ``on_train_epoch_start`` to
``on_train_epoch_end``, which Lightning calls after the epoch's validation; data loading included) and their ratio
``b / a`` — the target is at most 1.03. With three or more epochs the first one is left out as warm-up. The time
spent inside the two callbacks' probes is printed too (it is the overhead measured directly, less noisy than the
difference of two epoch times on a busy machine), and the part of it spent drawing the PNG / TensorBoard grids
(`visiondistill.explain.render.render_grid`, timed by wrapping it during run b).

    python benchmarks/explain_overhead.py [--data-dir data/shapes] [--epochs 3] [--num-train 3000] [--threads 4]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from visiondistill.data import ShapesClassification
from visiondistill.distill import LogitDistillation
from visiondistill.explain import FeatureMapCallback, GradCAMCallback, ProbeCallback, render
from visiondistill.models import ClassifierSpec
from visiondistill.tasks import ClassificationTask

from _common import quiet_trainer, synchronize

warnings.filterwarnings("ignore")


class EpochTimer(pl.Callback):
    """Wall time of every training epoch, its validation included, synchronised on CUDA."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._validated = False

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        synchronize()
        self._validated = False
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._validated = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        synchronize()
        self.times.append(time.perf_counter() - self._start)
        if not self._validated:
            raise RuntimeError("validation did not run inside the timed epoch; this benchmark needs Lightning >= 2.0")


class RenderClock:
    """Total wall time spent in `render.render_grid` (every grid the callbacks draw goes through it)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Wraps `render.render_grid` while the block runs."""
        original = render.render_grid

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        render.render_grid = timed
        try:
            yield
        finally:
            render.render_grid = original


def time_probes(callback: ProbeCallback, clock: RenderClock) -> list[tuple[float, float]]:
    """Wraps ``callback.probe``; each call appends ``(wall time, of which rendering)`` to the returned list."""
    times: list[tuple[float, float]] = []
    probe = callback.probe

    def timed(*args, **kwargs) -> None:
        synchronize()
        start, rendered = time.perf_counter(), clock.seconds
        probe(*args, **kwargs)
        synchronize()
        times.append((time.perf_counter() - start, clock.seconds - rendered))

    callback.probe = timed
    return times


def epoch_times(args: argparse.Namespace, explain: bool, out_dir: Path) -> tuple[list[float], list[float], list[float]]:
    """Trains ``args.epochs`` epochs; returns the epoch times, and per epoch the probe time and its rendering part."""
    pl.seed_everything(0, verbose=False)
    data = ShapesClassification(
        data_dir=args.data_dir, image_size=args.image_size, batch_size=args.batch_size, num_workers=args.num_workers
    )
    # The class names given explicitly: Lightning refuses to log differing `class_names` hparams of model and data.
    task = ClassificationTask(
        student=ClassifierSpec(name=args.student),
        teacher=ClassifierSpec(name=args.teacher),
        num_classes=data.num_classes,
        class_names=data.class_names,
    )
    timer = EpochTimer()
    callbacks: list[pl.Callback] = [LogitDistillation()]
    clock = RenderClock()
    probe_times: list[list[tuple[float, float]]] = []
    if explain:
        explainers = [GradCAMCallback(), FeatureMapCallback()]
        probe_times = [time_probes(callback, clock) for callback in explainers]
        callbacks += explainers
    trainer = quiet_trainer(
        [*callbacks, timer],
        max_epochs=args.epochs,
        limit_train_batches=math.ceil(args.num_train / args.batch_size) if args.num_train else None,
        limit_val_batches=math.ceil(args.num_val / args.batch_size) if args.num_val else None,
        accelerator="auto",
        logger=TensorBoardLogger(save_dir=out_dir, name="with" if explain else "without", version=""),
    )
    with clock.installed():
        trainer.fit(task, datamodule=data)
    per_epoch = [tuple(map(sum, zip(*calls, strict=True))) for calls in zip(*probe_times, strict=True)]
    return timer.times, [probe for probe, _ in per_epoch], [rendering for _, rendering in per_epoch]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data/shapes", help="shapes data set (generated there on first use)")
    parser.add_argument("--student", default="test_resnet")
    parser.add_argument("--teacher", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; from 3 on, the first is warm-up")
    parser.add_argument("--num-train", type=int, default=None, help="training images per epoch (default: all)")
    parser.add_argument("--num-val", type=int, default=None, help="validation images per epoch (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        out_dir = Path(args.out or scratch)
        without, _, _ = epoch_times(args, explain=False, out_dir=out_dir)
        with_explain, probes, rendering = epoch_times(args, explain=True, out_dir=out_dir)

    skip = 1 if args.epochs >= 3 else 0
    base, explained = statistics.median(without[skip:]), statistics.median(with_explain[skip:])
    probe, drawing = statistics.median(probes[skip:]), statistics.median(rendering[skip:])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    train = f"{args.num_train} training images" if args.num_train else "all training images"
    val = f"{args.num_val} validation images" if args.num_val else "all validation images"
    print(
        f"device: {device}; student {args.student}, teacher {args.teacher}, KD on in both runs; "
        f"batch {args.batch_size}×3×{args.image_size}², {train} and {val} per epoch, "
        f"median of {args.epochs - skip} epoch(s){' after 1 warm-up epoch' if skip else ''}"
    )
    print("epoch times (s), without: " + ", ".join(f"{t:.2f}" for t in without))
    print("epoch times (s), with   : " + ", ".join(f"{t:.2f}" for t in with_explain))
    print(f"(a) epoch without explanation callbacks : {base:8.2f} s")
    print(f"(b) epoch with GradCAM + FeatureMap     : {explained:8.2f} s")
    print(f"    time inside their probes per epoch  : {probe:8.2f} s  ({100 * probe / base:.1f}% of (a))")
    print(f"    of which drawing the grids          : {drawing:8.2f} s  ({100 * drawing / probe:.0f}% of the probes)")
    print(f"b / a = {explained / base:.3f}  (target <= 1.03 at the default cadence)")


if __name__ == "__main__":
    main()
