"""Epoch time, images/s and GPU utilisation of the classification and detection recipes, beside plain PyTorch.

For each recipe (the networks and distillation callbacks of ``configs/classification/shapes_kd.yaml`` and
``configs/detection/shapes_distilled.yaml``, untrained: only speed is measured) and each image size, on synthetic
shapes generated once into a temporary folder, in one process and on the same dataloader settings
(``num_workers: auto``, `visiondistill.data.loading`):

  ours KD       the task module under a Lightning Trainer with the recipe's logit-KD callback only,
  plain KD      a hand-written loop: the same networks, task loss, logit-KD term, AdamW, no Lightning,
  ours recipe   the task module with all the recipe's distillation callbacks,

each for ``--epochs`` epochs; the first is a warm-up (worker start, cuDNN autotuning, compilation), the others are
timed (median). GPU utilisation is sampled every 0.1 s through NVML (``pip install nvidia-ml-py``; left out when
it is missing) and averaged over the timed epochs. ``ours/plain`` is the KD epoch time over the plain one.

    python benchmarks/gpu_recipes.py                      # a CUDA device: 64 and 224 px, bf16-mixed, channels_last
    python benchmarks/gpu_recipes.py --device cpu --smoke # a seconds-long check that everything runs, on the CPU

Options: ``--sizes 64 224``, ``--images 2048`` (training images per recipe and size), ``--epochs 3``,
``--precision`` (default ``bf16-mixed`` on CUDA, ``32-true`` on the CPU), ``--[no-]channels-last`` (default: on
CUDA), ``--compile``, ``--recipes classification detection``, ``--num-workers auto``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visiondistill.data import ShapesClassification, ShapesDetection
from visiondistill.distill import (
    AttentionTransfer,
    DetectionLogitDistillation,
    FPNChannelWiseDistillation,
    LogitDistillation,
    losses,
)
from visiondistill.models import ClassifierSpec, DetectorSpec
from visiondistill.tasks import ClassificationTask, DetectionTask

from _common import quiet_trainer

warnings.filterwarnings("ignore")


# -- GPU utilisation ----------------------------------------------------------------------------------------------


class UtilisationSampler:
    """Samples the GPU's utilisation (NVML, percent) every ``interval`` seconds in a background thread."""

    def __init__(self, device: torch.device, interval: float = 0.1) -> None:
        self.samples: list[tuple[float, int]] = []
        self.interval = interval
        self._stop = threading.Event()
        self._handle = None
        self.reason = ""
        if device.type != "cuda":
            self.reason = "not a CUDA device"
            return
        try:
            import pynvml  # nvidia-ml-py
        except ImportError:
            self.reason = "pip install nvidia-ml-py for GPU utilisation"
            return
        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rate = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
            self.samples.append((time.perf_counter(), int(rate.gpu)))
            time.sleep(self.interval)

    def mean_between(self, windows: list[tuple[float, float]]) -> float | None:
        """Mean utilisation over the samples that fall in any of the ``(start, end)`` windows."""
        values = [u for t, u in self.samples if any(start <= t <= end for start, end in windows)]
        return statistics.fmean(values) if values else None

    def close(self) -> None:
        self._stop.set()


# -- what a run measures -------------------------------------------------------------------------------------------


@dataclass
class Result:
    """The timed epochs of one run."""

    epoch_times: list[float]
    windows: list[tuple[float, float]]
    images: int

    @property
    def epoch_time(self) -> float:
        return statistics.median(self.epoch_times)

    @property
    def images_per_second(self) -> float:
        return self.images / self.epoch_time


class EpochTimer(pl.Callback):
    """Wall time of each training epoch (CUDA synchronised), data loading included."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.windows: list[tuple[float, float]] = []

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = self._now()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.windows.append((self._start, self._now()))


def run_ours(task: pl.LightningModule, datamodule, callbacks: list, args: argparse.Namespace, device) -> Result:
    timer = EpochTimer(device)
    trainer = quiet_trainer(
        [*callbacks, timer],
        max_epochs=args.epochs,
        accelerator=device.type,
        precision=args.precision,
        limit_val_batches=0,
    )
    trainer.fit(task, datamodule=datamodule)
    windows = timer.windows[1:]
    return Result([end - start for start, end in windows], windows, len(datamodule.train_dataset))


def autocast(device: torch.device, precision: str):
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_device(v, device) for v in value)
    return value


def run_plain(
    student: nn.Module,
    teacher: nn.Module,
    loss_fn: Callable[[nn.Module, Any, Any, Any], Tensor],
    loader,
    args: argparse.Namespace,
    device: torch.device,
) -> Result:
    """A hand-written loop over ``loader``: student forward, teacher forward (no grad), ``loss_fn``, AdamW step."""
    student, teacher = student.to(device).train(), teacher.to(device).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "16-mixed")
    windows = []
    for _ in range(args.epochs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for batch in loader:
            batch = to_device(batch, device)
            images = batch[0]
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, args.precision):
                student_out = student(images)
                with torch.no_grad():
                    teacher_out = teacher(images)
                loss = loss_fn(student, batch, student_out, teacher_out)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        windows.append((start, time.perf_counter()))
    windows = windows[1:]
    return Result([end - start for start, end in windows], windows, len(loader.dataset))


# -- the recipes -----------------------------------------------------------------------------------------------


def classification_plain_loss(student: nn.Module, batch: Any, student_out: Tensor, teacher_out: Tensor) -> Tensor:
    s, t = student_out.float(), teacher_out.float()
    temperature = 4.0
    kd = F.kl_div(
        F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1), log_target=True, reduction="batchmean"
    )
    return F.cross_entropy(s, batch[1]) + temperature**2 * kd


def detection_plain_loss(student: nn.Module, batch: Any, student_out: Any, teacher_out: Any) -> Tensor:
    with torch.autocast(batch[0].device.type, enabled=False):
        terms = student.compute_loss(student_out, batch[1])
        s, t = student_out.cls_logits.float(), teacher_out.cls_logits.float()
        kd = losses.binary_kd_loss(s, t, temperature=1.0, weights=torch.sigmoid(t).amax(dim=-1))
    return sum(terms.values()) + kd


RECIPES: dict[str, dict[str, Any]] = {
    "classification": {
        "datamodule": ShapesClassification,
        "task": lambda **kw: ClassificationTask(
            student=ClassifierSpec(name="test_resnet"), teacher=ClassifierSpec(name="resnet18"), num_classes=6, **kw
        ),
        "kd": lambda: [LogitDistillation(temperature=4.0)],
        "recipe": lambda: [
            LogitDistillation(temperature=4.0),
            AttentionTransfer(student_layers=[-3, -2], teacher_layers=[-3, -2], weight=25.0),
        ],
        "plain_loss": classification_plain_loss,
        "batch_size": 64,
    },
    "detection": {
        "datamodule": ShapesDetection,
        "task": lambda **kw: DetectionTask(
            student=DetectorSpec(backbone="test_resnet", out_indices=[1, 2, 3], fpn_channels=32, head_convs=2),
            teacher=DetectorSpec(backbone="resnet18", out_indices=[1, 2, 3], fpn_channels=64, head_convs=2),
            num_classes=6,
            **kw,
        ),
        "kd": lambda: [DetectionLogitDistillation(temperature=1.0, weighting="teacher_score")],
        "recipe": lambda: [
            FPNChannelWiseDistillation(levels="all", tau=4.0),
            DetectionLogitDistillation(temperature=1.0, weighting="teacher_score"),
        ],
        "plain_loss": detection_plain_loss,
        "batch_size": 16,
    },
}


def measure(recipe: str, size: int, root: Path, args: argparse.Namespace, device: torch.device) -> dict[str, Result]:
    spec = RECIPES[recipe]
    batch_size = args.batch_size or spec["batch_size"]
    datamodule = spec["datamodule"](
        str(root / f"{recipe}_{size}"),
        image_size=size,
        batch_size=batch_size,
        num_workers=args.num_workers,
        num_train=args.images,
        num_val=max(2, batch_size // 4),
        num_test=0,
        difficulty=0.0,
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    options = {"channels_last": args.channels_last, "compile": args.compile}

    def task() -> pl.LightningModule:
        torch.manual_seed(0)
        return spec["task"](**options)

    results = {"ours KD": run_ours(task(), datamodule, spec["kd"](), args, device)}
    networks = task()  # the same initial weights, memory format and compilation as the task's
    loader = datamodule.train_dataloader()
    results["plain KD"] = run_plain(networks.student, networks.teacher, spec["plain_loss"], loader, args, device)
    del loader
    results["ours recipe"] = run_ours(task(), datamodule, spec["recipe"](), args, device)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 224])
    parser.add_argument("--images", type=int, default=2048, help="training images per recipe and size")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not timed")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 classification, 16 detection")
    parser.add_argument("--num-workers", default="auto")
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on CUDA, 32-true on the CPU")
    parser.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=None, help="default: on CUDA only"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile student and teacher (both sides)")
    parser.add_argument("--smoke", action="store_true", help="32 px, 16 images, 2 epochs: checks that it runs")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; use --device cpu (with --smoke for a quick check)")
    args.precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32-true")
    if args.channels_last is None:
        args.channels_last = device.type == "cuda"
    if args.smoke:
        args.sizes, args.images, args.epochs, args.batch_size = [32], 16, 2, args.batch_size or 8
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is a warm-up)")

    sampler = UtilisationSampler(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for recipe in args.recipes:
                for size in args.sizes:
                    for run, result in measure(recipe, size, Path(tmp), args, device).items():
                        rows.append((recipe, size, run, result, sampler.mean_between(result.windows)))
    finally:
        sampler.close()

    print(
        f"device: {name}; precision {args.precision}, channels_last {args.channels_last}, compile {args.compile}, "
        f"num_workers {args.num_workers}; {args.images} training images, median of {args.epochs - 1} timed epochs"
        + (f"; GPU utilisation: {sampler.reason}" if sampler.reason else "")
    )
    header = (
        f"{'recipe':<14} {'px':>4} {'run':<12} {'epoch s':>9} {'images/s':>10} {'GPU util %':>10} {'ours/plain':>10}"
    )
    print(header)
    print("-" * len(header))
    plain = {(r, s): res.epoch_time for r, s, run, res, _ in rows if run == "plain KD"}
    for recipe, size, run, result, utilisation in rows:
        util = f"{utilisation:10.0f}" if utilisation is not None else f"{'-':>10}"
        ratio = f"{result.epoch_time / plain[(recipe, size)]:10.3f}" if run != "plain KD" else f"{'':>10}"
        print(
            f"{recipe:<14} {size:>4} {run:<12} {result.epoch_time:9.2f} {result.images_per_second:10.0f} {util} {ratio}"
        )


if __name__ == "__main__":
    main()
