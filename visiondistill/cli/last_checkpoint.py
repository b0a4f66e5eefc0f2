"""`LastCheckpoint`: ``last.ckpt`` at the end of every training epoch and when the run is stopped (SIGTERM, Ctrl-C)."""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Checkpoint, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException
from typing_extensions import override

__all__ = ["LastCheckpoint"]


class LastCheckpoint(Checkpoint):
    """Writes ``last.ckpt`` at the end of every training epoch and when the run is stopped by SIGTERM or Ctrl-C.

    It is written whether or not the monitored score improved, so ``visiondistill fit … --ckpt_path last`` resumes
    where the run stopped.
    Lightning's ``ModelCheckpoint(save_last=True)`` refreshes ``last.ckpt`` only in epochs that also write a top-k
    checkpoint: a run whose score stopped improving resumed from its best epoch, not its last. This callback saves
    after every `ModelCheckpoint` (Lightning runs `Checkpoint` callbacks last, in order, and `VisionDistillCLI` appends
    this one), so the file holds their updated state and every other callback's end-of-epoch state. The file is
    written to a temporary name and renamed, so a run killed while saving keeps the previous ``last.ckpt``; the loggers
    are flushed first, so the events on disk reach at least as far as the checkpoint.

    A checkpoint written on SIGTERM or Ctrl-C lies inside an epoch; Lightning resumes it from the next batch (and warns
    that the data loader restarts that epoch's order). Other exceptions write nothing: the state may be half-updated.

    Args:
        dirpath: The folder of ``last.ckpt``; by default the first `ModelCheckpoint`'s, else ``<log_dir>/checkpoints``.
        filename: The file name.

    Example::

        >>> from pytorch_lightning.callbacks import ModelCheckpoint
        >>> callbacks = [ModelCheckpoint(monitor="val/acc", mode="max", filename="best"), LastCheckpoint()]
        >>> trainer = pl.Trainer(callbacks=callbacks, logger=False, enable_progress_bar=False)
        >>> [type(callback).__name__ for callback in trainer.checkpoint_callbacks]  # run last, in this order
        ['ModelCheckpoint', 'LastCheckpoint']
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str = "last.ckpt") -> None:
        super().__init__()
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.filename = filename
        self.last_path: Path | None = None
        self._saved_step: int | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None and stage == "fit":
            model_checkpoints = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
            # ModelCheckpoint resolves its folder in its own `setup`, which Lightning calls before this one.
            folder = model_checkpoints[0].dirpath if model_checkpoints else None
            self.dirpath = Path(folder) if folder else Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and not trainer.fast_dev_run:
            self.save(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Only stops asked for by the user: after any other error the state may be half-updated.
        if isinstance(exception, KeyboardInterrupt | SIGTERMException) and trainer.state.fn == "fit":
            if not trainer.sanity_checking and not trainer.fast_dev_run and trainer.global_step > 0:
                self.save(trainer)

    def save(self, trainer: pl.Trainer) -> Path:
        """Writes the checkpoint now (once per global step) and returns its path."""
        assert self.dirpath is not None, "LastCheckpoint.save before setup"
        path = self.dirpath / self.filename
        if self._saved_step == trainer.global_step and path.is_file():
            return path
        for logger in trainer.loggers:
            logger.save()
        temporary = path.with_name(f".{path.name}.partial")
        trainer.save_checkpoint(temporary)
        if trainer.is_global_zero:
            os.replace(temporary, path)
        trainer.strategy.barrier()
        self._saved_step, self.last_path = trainer.global_step, path
        return path
