"""How much does the distillation stack cost beyond the networks themselves, and beyond a plain PyTorch loop?

Measures, in one process and on the same batches:
  (a) the median training step of the student alone (a `ClassificationTask` without teacher),
  (b) the median forward pass of the teacher alone (no gradients, eval mode),
  (c) the median training step of the student distilled with the KD + attention-transfer callbacks,
  (d) the median training step of the student distilled with KD only (`LogitDistillation`),
  (e) the median step of a plain PyTorch KD loop: the same networks, loss (cross-entropy + T²·KL), optimiser and
      schedule, written by hand,
  (f) the median step of a plain PyTorch student-only loop,
and prints ``c / (a + b)`` (1.00: hooks, loss terms, logging and teacher freezing add nothing beyond running both
networks), ``d / e`` (our KD step over the hand-written one; targets: <= 1.10 at 64 px and <= 1.03 at 224 px on a
GPU, <= 1.05 on a CPU) and ``a / f``. Lightning steps are timed from ``on_train_batch_start`` to
``on_train_batch_end`` (forward, backward and optimiser step; the batch is already on the device), the plain loops
over the same work; on CUDA every timing is synchronised.

The (d)/(e) and (a)/(f) pairs are measured in ``--rounds`` alternating rounds and the medians pooled, so a change
of load on a shared machine hits both sides alike.

    python benchmarks/distill_overhead.py [--student test_resnet] [--teacher resnet18] [--image-size 64]
        [--batch-size 64] [--steps 40] [--rounds 3] [--precision 32-true|bf16-mixed|16-mixed] [--channels-last]
        [--compile] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from visiondistill.distill import AttentionTransfer, LogitDistillation
from visiondistill.models import ClassifierSpec
from visiondistill.tasks import ClassificationTask

from _common import StepTimer, quiet_trainer, synchronize

warnings.filterwarnings("ignore")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def lightning_steps(
    task: ClassificationTask, loader: DataLoader, callbacks: list, steps: int, warmup: int, precision: str
) -> list[float]:
    """The step times (after ``warmup``) of ``steps`` training steps of ``task`` under a Lightning Trainer."""
    timer = StepTimer()
    trainer = quiet_trainer([*callbacks, timer], max_steps=steps + warmup, accelerator=DEVICE.type, precision=precision)
    trainer.fit(task, loader)
    return timer.times[warmup:]


def batches(loader: DataLoader) -> Iterator[tuple[Tensor, Tensor]]:
    """The loader's batches, round and round."""
    while True:
        yield from loader


def autocast_context(precision: str):
    """The autocast a Lightning ``precision`` setting uses (a disabled one for full precision)."""
    if precision == "bf16-mixed":
        return torch.autocast(DEVICE.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(DEVICE.type, dtype=torch.float16)
    return torch.autocast(DEVICE.type, enabled=False)


def plain_steps(
    student: nn.Module,
    teacher: nn.Module | None,
    loader: DataLoader,
    steps: int,
    warmup: int,
    precision: str,
    channels_last: bool,
    temperature: float = 4.0,
) -> list[float]:
    """A hand-written training loop: cross-entropy (+ ``T²·KL`` with a teacher), AdamW, a per-step LambdaLR."""
    student = student.to(DEVICE).train()
    if teacher is not None:
        teacher = teacher.to(DEVICE).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler(DEVICE.type, enabled=precision == "16-mixed")
    times = []
    source = batches(loader)
    for i in range(steps + warmup):
        images, labels = next(source)
        images, labels = images.to(DEVICE, non_blocking=True), labels.to(DEVICE, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        synchronize()
        start = time.perf_counter()
        with autocast_context(precision):
            logits = student(images)
            loss = F.cross_entropy(logits.float(), labels)
            if teacher is not None:
                with torch.no_grad():
                    soft = teacher(images).float()
                log_p = F.log_softmax(logits.float() / temperature, dim=1)
                log_q = F.log_softmax(soft / temperature, dim=1)
                kl = F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
                loss = loss + temperature**2 * kl
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


@torch.no_grad()
def teacher_forwards(teacher: nn.Module, loader: DataLoader, steps: int, warmup: int, precision: str) -> list[float]:
    teacher = teacher.to(DEVICE).eval()
    times = []
    source = batches(loader)
    for i in range(steps + warmup):
        images = next(source)[0].to(DEVICE)
        synchronize()
        start = time.perf_counter()
        with autocast_context(precision):
            teacher(images)
        synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def pooled_medians(rounds: int, *measures: Callable[[], list[float]]) -> list[float]:
    """Runs the measures one after the other, ``rounds`` times, and returns each one's median over all rounds."""
    samples: list[list[float]] = [[] for _ in measures]
    for _ in range(rounds):
        for pool, measure in zip(samples, measures, strict=True):
            pool.extend(measure())
    return [statistics.median(pool) for pool in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", default="test_resnet")
    parser.add_argument("--teacher", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the ours/plain pairs")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile student and teacher (both sides)")
    parser.add_argument("--skip-kd-at", action="store_true", help="skip (c), the KD + AT step and its ratio")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadier on a busy CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(0)
    n = args.batch_size * 8
    images = torch.randn(n, 3, args.image_size, args.image_size, generator=generator)
    loader = DataLoader(TensorDataset(images, torch.randint(0, 6, (n,), generator=generator)), args.batch_size)

    def task(with_teacher: bool) -> ClassificationTask:
        torch.manual_seed(0)
        teacher = ClassifierSpec(name=args.teacher) if with_teacher else None
        return ClassificationTask(
            student=ClassifierSpec(name=args.student),
            teacher=teacher,
            num_classes=6,
            channels_last=args.channels_last,
            compile=args.compile,
            scheduler="constant",
            warmup_epochs=1e-9,  # a per-step LambdaLR of factor 1, as the plain loop's
        )

    def networks(with_teacher: bool) -> tuple[nn.Module, nn.Module | None]:
        module = task(with_teacher)  # the same initial weights and memory format as the task's
        return module.student, module.teacher

    steps, warmup, precision = args.steps, args.warmup, args.precision

    def ours_kd() -> list[float]:
        return lightning_steps(task(True), loader, [LogitDistillation()], steps, warmup, precision)

    def plain_kd() -> list[float]:
        return plain_steps(*networks(True), loader, steps, warmup, precision, args.channels_last)

    def ours_student() -> list[float]:
        return lightning_steps(task(False), loader, [], steps, warmup, precision)

    def plain_student() -> list[float]:
        return plain_steps(networks(False)[0], None, loader, steps, warmup, precision, args.channels_last)

    kd_step, plain_kd_step = pooled_medians(args.rounds, ours_kd, plain_kd)
    student_step, plain_student_step = pooled_medians(args.rounds, ours_student, plain_student)
    teacher_forward = statistics.median(teacher_forwards(networks(True)[1], loader, steps, warmup, precision))
    distill_step = math.nan
    if not args.skip_kd_at:
        callbacks = [LogitDistillation(), AttentionTransfer(student_layers=[-2, -1], teacher_layers=[-2, -1])]
        distill_step = statistics.median(lightning_steps(task(True), loader, callbacks, steps, warmup, precision))

    device = torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    options = f"precision {precision}" + (", channels_last" if args.channels_last else "")
    options += ", compiled" if args.compile else ""
    print(
        f"device: {device}; student {args.student}, teacher {args.teacher}, batch {args.batch_size}×3×"
        f"{args.image_size}², {options}; median of {args.steps} steps ({args.rounds} rounds for the ours/plain pairs)"
    )
    print(f"(a) student-only training step : {1000 * student_step:8.2f} ms")
    print(f"(b) teacher forward            : {1000 * teacher_forward:8.2f} ms")
    print(f"(c) KD + AT distillation step  : {1000 * distill_step:8.2f} ms")
    print(f"(d) KD distillation step       : {1000 * kd_step:8.2f} ms")
    print(f"(e) plain PyTorch KD step      : {1000 * plain_kd_step:8.2f} ms")
    print(f"(f) plain PyTorch student step : {1000 * plain_student_step:8.2f} ms")
    if not args.skip_kd_at:
        ratio = distill_step / (student_step + teacher_forward)
        print(f"c / (a + b) = {ratio:.3f}  (framework overhead {100 * (ratio - 1):+.1f}%)")
    print(f"d / e       = {kd_step / plain_kd_step:.3f}  (our KD step over a plain PyTorch KD step)")
    print(f"a / f       = {student_step / plain_student_step:.3f}  (our student-only step over a plain one)")


if __name__ == "__main__":
    main()
