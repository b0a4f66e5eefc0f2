"""What the benchmark scripts share: a quiet Lightning Trainer and a step timer.

The scripts import it as ``from _common import …``: Python puts a script's own folder first on ``sys.path`` when it
runs ``python benchmarks/<script>.py``. A test that loads a script from its path puts ``benchmarks/`` on
``sys.path`` first (``tests/benchmarks/conftest.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import pytorch_lightning as pl
import torch


def quiet_trainer(callbacks: Iterable[pl.Callback] = (), **overrides: Any) -> pl.Trainer:
    """A one-device Trainer that writes nothing and prints nothing: no logger, checkpoints, progress bar or summary.

    Args:
        callbacks: The run's callbacks.
        **overrides: Any other ``pl.Trainer`` argument; these win over the defaults (``accelerator="cpu"``,
            ``devices=1``, no sanity validation).

    Returns:
        The Trainer.
    """
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    options.update(overrides)
    return pl.Trainer(callbacks=list(callbacks), **options)


def synchronize() -> None:
    """Waits for queued CUDA work, so that a wall-clock reading covers it; nothing on a CPU."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(pl.Callback):
    """Wall time of every training step (forward, backward, optimizer step), synchronised on CUDA."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize()
        self.times.append(time.perf_counter() - self._start)
