"""How much does the distillation stack cost beyond the networks themselves?

Measures, in one process and on the same batches:
  (a) the median training step of the student alone (a `ClassificationTask` without teacher),
  (b) the median forward pass of the teacher alone (no gradients, eval mode),
  (c) the median training step of the student distilled with the KD + attention-transfer callbacks,
and prints ``c / (a + b)``: 1.00 means the framework (hooks, loss terms, logging, teacher freezing)
adds nothing beyond running both networks. Steps are timed from ``on_train_batch_start`` to
``on_train_batch_end`` (forward, backward and optimizer step), so data loading is excluded.

    python benchmarks/distill_overhead.py [--student test_resnet] [--teacher resnet18] [--steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from visiondistill.distill import AttentionTransfer, LogitDistillation
from visiondistill.models import ClassifierSpec
from visiondistill.tasks import ClassificationTask

warnings.filterwarnings("ignore")


class StepTimer(pl.Callback):
    """Wall time of every training step, synchronised on CUDA."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync()
        self.times.append(time.perf_counter() - self._start)


def median_step(task: ClassificationTask, loader: DataLoader, callbacks: list, steps: int, warmup: int) -> float:
    timer = StepTimer()
    trainer = pl.Trainer(
        max_steps=steps + warmup,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*callbacks, timer],
    )
    trainer.fit(task, loader)
    return statistics.median(timer.times[warmup:])


@torch.no_grad()
def median_teacher_forward(task: ClassificationTask, loader: DataLoader, steps: int, warmup: int) -> float:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher = task.teacher.to(device).eval()
    times = []
    batches = iter(loader)
    for i in range(steps + warmup):
        try:
            images, _ = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, _ = next(batches)
        images = images.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        teacher(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", default="test_resnet")
    parser.add_argument("--teacher", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    n = args.batch_size * 8
    images = torch.randn(n, 3, args.image_size, args.image_size, generator=generator)
    loader = DataLoader(TensorDataset(images, torch.randint(0, 6, (n,), generator=generator)), args.batch_size)

    def task(with_teacher: bool) -> ClassificationTask:
        torch.manual_seed(0)
        teacher = ClassifierSpec(name=args.teacher) if with_teacher else None
        return ClassificationTask(student=ClassifierSpec(name=args.student), teacher=teacher, num_classes=6)

    student_step = median_step(task(False), loader, [], args.steps, args.warmup)
    teacher_forward = median_teacher_forward(task(True), loader, args.steps, args.warmup)
    callbacks = [LogitDistillation(), AttentionTransfer(student_layers=[-2, -1], teacher_layers=[-2, -1])]
    distill_step = median_step(task(True), loader, callbacks, args.steps, args.warmup)
    ratio = distill_step / (student_step + teacher_forward)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"device: {device}; student {args.student}, teacher {args.teacher}, "
        f"batch {args.batch_size}×3×{args.image_size}², median of {args.steps} steps"
    )
    print(f"(a) student-only training step : {1000 * student_step:8.2f} ms")
    print(f"(b) teacher forward            : {1000 * teacher_forward:8.2f} ms")
    print(f"(c) KD + AT distillation step  : {1000 * distill_step:8.2f} ms")
    print(f"c / (a + b) = {ratio:.3f}  (framework overhead {100 * (ratio - 1):+.1f}%)")


if __name__ == "__main__":
    main()
