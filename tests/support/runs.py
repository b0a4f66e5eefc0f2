"""Run folders for the CLI tests: a tiny distilled classification config, callbacks that freeze or stop a run where a
test wants to kill it, and one that records what a resumed run restored.

The classes are named by ``class_path`` in configs that run in a subprocess, so this module is imported as
``support.runs`` with ``tests/`` on ``PYTHONPATH`` (`TESTS_DIR`).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import Callback

from visiondistill.core.callback import DistillationCallback
from visiondistill.distill import AdaptiveDistillationWeights
from visiondistill.explain.probe import ProbeCallback

#: The folder to put on ``PYTHONPATH`` so that ``support.runs`` imports in a subprocess.
TESTS_DIR = Path(__file__).resolve().parents[1]


def distilled_config(tmp_path: Path, name: str = "kd", max_epochs: int = 3, extra: list[dict] | None = None) -> Path:
    """A seconds-long distilled classification run: random test_resnet teacher, KD + a FitNets hint (a connector),
    a KD warm-up (`WeightSchedule`), loss balancing (`AdaptiveDistillationWeights`, which lowers KD's factor at every
    validation), Grad-CAM on a probe batch, best/last checkpoints; 2 batches of 4 images of 32 px per epoch."""
    config = {
        "seed_everything": 0,
        "model": {
            "class_path": "visiondistill.tasks.ClassificationTask",
            "init_args": {
                "student": {"name": "test_resnet", "in_channels": 3},
                "teacher": {"name": "test_resnet", "in_channels": 3},
                "num_classes": 6,
                "lr": 0.003,
                "warmup_epochs": 0,
            },
        },
        "data": {
            "class_path": "visiondistill.data.ShapesClassification",
            "init_args": {
                "data_dir": str(tmp_path / "data"),
                "image_size": 32,
                "batch_size": 4,
                "num_workers": 0,
                "num_train": 8,
                "num_val": 4,
                "num_test": 4,
            },
        },
        "trainer": {
            "max_epochs": max_epochs,
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": name, "version": ""},
            },
            "callbacks": [
                {"class_path": "visiondistill.distill.LogitDistillation", "init_args": {"temperature": 4.0}},
                {
                    "class_path": "visiondistill.distill.FeatureHint",
                    "init_args": {"student_layer": -1, "teacher_layer": -1},
                },
                {
                    "class_path": "visiondistill.distill.WeightSchedule",
                    "init_args": {"schedules": {"kd": {"warmup": 4}}},
                },
                {
                    "class_path": "visiondistill.distill.AdaptiveDistillationWeights",
                    "init_args": {"balance": ["kd"], "max_share": 0.001, "min_factor": 0.01},
                },
                {
                    "class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                    "init_args": {"monitor": "val/acc_top1", "mode": "max", "filename": "best"},
                },
                {
                    "class_path": "visiondistill.explain.GradCAMCallback",
                    "init_args": {"num_samples": 3, "layers": [-1], "log_images": False},
                },
                *(extra or []),
            ],
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class FreezeAt(Callback):
    """Stops the run where a test kills it: at batch ``batch`` of epoch ``epoch`` it flushes the loggers (so the events
    of that epoch's first batches are on disk, as a run killed later would leave them), writes ``marker`` and sleeps.

    Args:
        epoch: The epoch (0-based).
        batch: The batch index in it.
        marker: The file written once the run is frozen.
    """

    def __init__(self, epoch: int, batch: int, marker: str) -> None:
        self.epoch, self.batch, self.marker = epoch, batch, marker

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, index: int) -> None:
        if trainer.current_epoch == self.epoch and index == self.batch:
            for logger in trainer.loggers:
                logger.save()
            Path(self.marker).write_text(str(trainer.global_step))
            time.sleep(120)


class StopAt(Callback):
    """Stops the run at batch ``batch`` of epoch ``epoch``, as Ctrl-C (``KeyboardInterrupt``) or SIGTERM does.

    Args:
        how: ``"ctrl-c"`` or ``"sigterm"``.
        epoch: The epoch (0-based).
        batch: The batch index in it.
    """

    def __init__(self, how: str = "sigterm", epoch: int = 1, batch: int = 1) -> None:
        self.how, self.epoch, self.batch = how, epoch, batch

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, index: int) -> None:
        if trainer.current_epoch == self.epoch and index == self.batch:
            if self.how == "ctrl-c":
                raise KeyboardInterrupt
            # Lightning's handler sets a flag and raises SIGTERMException at the next check; without it, the
            # default action would end the test process, so the handler is checked first.
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
            os.kill(os.getpid(), signal.SIGTERM)


class RecordRestored(Callback):
    """Writes what a (resumed) fit starts from to ``path`` as JSON, at ``on_train_start`` (after Lightning's restore),
    and the probe batch the first probe used at the end of the first validation."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.record: dict[str, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        adapters = getattr(pl_module, "distill_adapters", None)
        self.record = {
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "adapters": {k: v.tolist() for k, v in adapters.state_dict().items()} if adapters is not None else {},
            "distillers": {
                cb.name: {"weight": cb.weight, "base": cb.base_weight, "factors": cb.weight_factors}
                for cb in trainer.callbacks
                if isinstance(cb, DistillationCallback)
            },
            "adaptive": [cb.state_dict() for cb in trainer.callbacks if isinstance(cb, AdaptiveDistillationWeights)],
            "restored_probe": [
                cb._restored.indices.tolist() if cb._restored is not None else None
                for cb in trainer.callbacks
                if isinstance(cb, ProbeCallback)
            ],
        }
        Path(self.path).write_text(json.dumps(self.record))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "probe_used" in self.record or trainer.sanity_checking:
            return
        probes = [cb.probe_batch for cb in trainer.callbacks if isinstance(cb, ProbeCallback)]
        self.record["probe_used"] = [p.indices.tolist() if p is not None else None for p in probes]
        self.record["probe_images"] = [float(p.images.sum()) if p is not None else None for p in probes]
        Path(self.path).write_text(json.dumps(self.record))


def event_steps(run_dir: Path) -> dict[str, list[int]]:
    """Every scalar tag's logged steps, as TensorBoard (and the report) read the run folder's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [event.step for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def raw_event_steps(run_dir: Path, tag: str) -> list[int]:
    """The steps of one tag in the event files as written, before TensorBoard drops what a resume purged."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = []
    for file in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(file)).Load():
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return steps


def checkpoint_state(path: Path) -> dict[str, Any]:
    """A checkpoint, loaded on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=False)
