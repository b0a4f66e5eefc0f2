"""Data-free training batches: images synthesised from the task's own teacher by DeepInversion (docs/data_free.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from visiondistill.core.errors import ConfigError
from visiondistill.core.protocol import get_student, get_teacher
from visiondistill.data.inversion import DeepInversion, InversionSettings
from visiondistill.data.transforms import resolve_normalization

__all__ = ["DataFreeClassification", "save_image_grid"]


class DataFreeClassification(pl.LightningDataModule):
    """Training batches synthesised from the teacher of the task it trains: no training images at all.

    Every training batch is a fresh DeepInversion batch (`visiondistill.data.inversion`): ``batch_size`` images
    optimised so the teacher's BatchNorm statistics and the batch's target classes (spread evenly over the classes,
    shuffled) are matched. The batch is ``(images, targets)``, so any classification task module and distillation
    callback takes it as it takes real images; the targets are the classes the images were made for — set the
    task's ``task_weight: 0`` to let the distillation terms alone teach, as in the paper. The teacher is the task's
    ``teacher`` (read from the trainer at every batch), the student (for ``competition_weight > 0``) its ``student``.

    At the first batch of every epoch a grid of that batch is saved to ``<log_dir>/data_free/epoch_XXX.png``.
    Validation and testing (the only place real images appear, when there are any) are delegated to ``eval_data``.

    Args:
        num_classes: Classes of the teacher (and of the targets).
        class_names: Class names (default: ``eval_data``'s once set up, else ``"0"``, ``"1"``, …).
        image_size: Height and width of the synthesised images.
        in_channels: Channels of the synthesised images.
        batch_size: Images per training batch.
        batches_per_epoch: Training batches per epoch.
        iterations: Optimiser steps per synthesised batch (see `InversionSettings` for this and the weights).
        lr: Learning rate on the pixels.
        ce_weight: Weight of the teacher's cross-entropy on the targets.
        bn_weight: Weight of the BatchNorm statistics loss.
        first_bn_multiplier: Extra factor on the first BatchNorm layer.
        tv_l2_weight: Weight of the total-variation prior.
        l2_weight: Weight of the L2 prior.
        competition_weight: Weight of Adaptive DeepInversion's student-teacher competition (0: off).
        jitter: Largest random roll in pixels per step.
        flip: Random horizontal flips during the optimisation.
        mean: Normalisation mean of the teacher's inputs (default ImageNet's, as the shapes datamodules use).
        std: Normalisation std.
        seed: Seed of the targets, the initial noise and the jitter (batch ``i`` of epoch ``e`` is reproducible).
        save_grid: Save the grid of the first batch of every epoch.
        eval_data: A datamodule for validation and testing (e.g. `ShapesClassification`); ``None``: none.

    Raises:
        ConfigError: For invalid counts, sizes or weights, or an ``eval_data`` with other classes or channels.
    """

    def __init__(
        self,
        num_classes: int = 6,
        class_names: Sequence[str] | None = None,
        image_size: int = 32,
        in_channels: int = 3,
        batch_size: int = 64,
        batches_per_epoch: int = 10,
        iterations: int = 200,
        lr: float = 0.1,
        ce_weight: float = 1.0,
        bn_weight: float = 10.0,
        first_bn_multiplier: float = 10.0,
        tv_l2_weight: float = 1e-4,
        l2_weight: float = 1e-5,
        competition_weight: float = 0.0,
        jitter: int = 2,
        flip: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
        save_grid: bool = True,
        eval_data: pl.LightningDataModule | None = None,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("num_classes", num_classes, 2),
            ("image_size", image_size, 8),
            ("batch_size", batch_size, 1),
            ("batches_per_epoch", batches_per_epoch, 1),
        ):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise ConfigError(f"DataFreeClassification: {name} must be an integer >= {low}, got {value!r}")
        mean, std = resolve_normalization(in_channels, mean, std)
        self.settings = InversionSettings(
            iterations=iterations,
            lr=lr,
            ce_weight=ce_weight,
            bn_weight=bn_weight,
            first_bn_multiplier=first_bn_multiplier,
            tv_l2_weight=tv_l2_weight,
            l2_weight=l2_weight,
            competition_weight=competition_weight,
            jitter=jitter,
            flip=flip,
            mean=mean,
            std=std,
        )
        self.num_classes, self.image_size, self.in_channels = num_classes, image_size, in_channels
        self.batch_size, self.batches_per_epoch, self.seed = batch_size, batches_per_epoch, seed
        self.save_grid, self.eval_data = save_grid, eval_data
        if eval_data is not None:
            self._check_eval_data(eval_data)
        self._names_given = class_names is not None
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ConfigError(
                f"DataFreeClassification: {len(self.class_names)} class_names for num_classes={num_classes}; "
                "give one name per class"
            )

    def _check_eval_data(self, eval_data: Any) -> None:
        if not isinstance(eval_data, pl.LightningDataModule):
            raise ConfigError(
                f"DataFreeClassification: eval_data must be a LightningDataModule, got {type(eval_data).__name__}"
            )
        for name in ("in_channels", "image_size"):
            value = getattr(eval_data, name, None)
            if value is not None and value != getattr(self, name):
                raise ConfigError(
                    f"DataFreeClassification: eval_data has {name}={value} but the synthesised images have "
                    f"{getattr(self, name)}; set the same {name} on both"
                )

    def prepare_data(self) -> None:
        """Prepares ``eval_data`` (e.g. generates the shapes); the training images need nothing."""
        if self.eval_data is not None:
            self.eval_data.prepare_data()

    def setup(self, stage: str) -> None:
        """Sets ``eval_data`` up and checks its class count; adopts its class names unless given."""
        if self.eval_data is not None:
            self.eval_data.trainer = self.trainer
            self.eval_data.setup(stage)
            data_classes = getattr(self.eval_data, "num_classes", None)
            if data_classes is not None and data_classes != self.num_classes:
                raise ConfigError(
                    f"DataFreeClassification: eval_data has {data_classes} classes but num_classes is "
                    f"{self.num_classes}; set data.init_args.num_classes: {data_classes}"
                )
            names = getattr(self.eval_data, "class_names", None)
            if not self._names_given and names is not None and len(names) == self.num_classes:
                self.class_names = list(names)

    def train_dataloader(self) -> DataLoader:
        """``batches_per_epoch`` synthesised ``(images, targets)`` batches, made as the loop asks for them."""
        # batch_size=None: each item is a whole batch; no workers, as the teacher lives in this process.
        return DataLoader(_SynthesisBatches(self), batch_size=None, num_workers=0)

    def val_dataloader(self) -> Any:
        """``eval_data``'s validation loader (none without ``eval_data``)."""
        return self.eval_data.val_dataloader() if self.eval_data is not None else []

    def test_dataloader(self) -> Any:
        """``eval_data``'s test loader (none without ``eval_data``)."""
        return self.eval_data.test_dataloader() if self.eval_data is not None else []

    def synthesize(self, epoch: int, index: int) -> tuple[Tensor, Tensor]:
        """Batch ``index`` of ``epoch``: the images (on the teacher's device) and their target classes."""
        teacher = self._teacher()
        student = get_student(self.trainer.lightning_module) if self.settings.competition_weight > 0 else None
        seed = self.seed * 1_000_003 + epoch * 10_007 + index
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(self.batch_size, generator=generator)
        targets = (torch.arange(self.batch_size) % self.num_classes)[order]
        images, _ = DeepInversion(teacher, self.settings).synthesize(
            targets, image_size=self.image_size, in_channels=self.in_channels, student=student, seed=seed
        )
        self._save_grid(epoch, index, images)
        return images, targets.to(images.device)

    def _save_grid(self, epoch: int, index: int, images: Tensor) -> None:
        if index == 0 and self.save_grid and self.trainer.log_dir is not None and self.trainer.is_global_zero:
            path = Path(self.trainer.log_dir) / "data_free" / f"epoch_{epoch:03d}.png"
            save_image_grid(images, path, self.settings.mean, self.settings.std)

    def _teacher(self) -> Any:
        module = self.trainer.lightning_module if self.trainer is not None else None
        teacher = get_teacher(module, required=True, who=type(self).__name__) if module is not None else None
        if teacher is None:
            raise ConfigError(f"{type(self).__name__} synthesises from the task's teacher: attach it to a Trainer")
        return teacher


class _SynthesisBatches(Dataset):
    """``batches_per_epoch`` synthesised batches, each made when the training loop asks for it."""

    def __init__(self, datamodule: DataFreeClassification) -> None:
        self.datamodule = datamodule

    def __len__(self) -> int:
        return self.datamodule.batches_per_epoch

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        trainer = self.datamodule.trainer
        return self.datamodule.synthesize(trainer.current_epoch if trainer is not None else 0, index)


def save_image_grid(images: Tensor, path: str | Path, mean: Sequence[float], std: Sequence[float]) -> Path:
    """Writes normalised images N×C×H×W as one PNG grid (un-normalised, up to 8 per row); returns the path."""
    images = images.detach().float().cpu()
    channels = images.shape[1]
    mean_t = torch.tensor(list(mean)[:channels]).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std)[:channels]).view(1, -1, 1, 1)
    pixels = ((images * std_t + mean_t).clamp(0, 1) * 255).round().to(torch.uint8)
    count, _, height, width = pixels.shape
    columns = min(8, count)
    rows = -(-count // columns)
    pad = 2
    canvas = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, channels), 255, dtype=np.uint8)
    for i, image in enumerate(pixels.permute(0, 2, 3, 1).numpy()):
        top, left = pad + (i // columns) * (height + pad), pad + (i % columns) * (width + pad)
        canvas[top : top + height, left : left + width] = image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas[..., 0] if channels == 1 else canvas).save(path)
    return path
