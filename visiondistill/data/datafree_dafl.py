"""Data-free training batches from a DAFL generator that trains alongside the student (docs/data_free.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from visiondistill.data.dafl import DAFL, DAFLSettings, check_image_size
from visiondistill.data.datafree import DataFreeClassification

__all__ = ["DAFLDataFreeClassification"]


class DAFLDataFreeClassification(DataFreeClassification):
    """Training batches made by a DAFL generator (`visiondistill.data.dafl`) that this datamodule owns and trains.

    Every training batch costs one generator update (``generator_steps``): noise ``z`` → ``G(z)`` → the teacher's
    one-hot, activation and information-entropy losses → an Adam step on the generator. The batch handed to the
    training loop is that ``G(z)``, detached, with the teacher's argmax as targets, so the ordinary
    `ClassificationTask` and any distillation callback train the student on it — the DAFL iteration, with the
    generator's half done here and the student's half by the task. The generator and its optimiser live in this
    datamodule (not in the task, whose optimiser is the student's) and are saved with the run's checkpoints
    (`state_dict`). Set the task's ``task_weight: 0`` so the KD term alone teaches, as in the paper.

    DAFL reads no batch-norm statistics: any teacher with a linear classifier works (with ``activation_weight: 0``,
    any teacher that returns logits). At the first batch of every epoch a grid of the batch is saved to
    ``<log_dir>/data_free/epoch_XXX.png``; validation and testing are delegated to ``eval_data``.

    Args:
        num_classes: Classes of the teacher.
        class_names: Class names (default: ``eval_data``'s once set up, else ``"0"``, ``"1"``, …).
        image_size: Height and width of the generated images (a multiple of 4).
        in_channels: Channels of the generated images.
        batch_size: Images per training batch (the paper: large batches help the entropy term).
        batches_per_epoch: Training batches (= generator updates) per epoch.
        latent_dim: Size of the noise vector.
        hidden_channels: Width of the generator.
        generator_lr: Adam's learning rate of the generator.
        one_hot_weight: Weight of the one-hot loss.
        activation_weight: Weight of the activation loss (α in the paper).
        entropy_weight: Weight of the information-entropy loss (β in the paper).
        generator_steps: Generator updates per batch.
        mean: Normalisation mean of the teacher's inputs (for the grid; default ImageNet's).
        std: Normalisation std.
        seed: Seed of the generator's initial weights and of the noise (batch ``i`` of epoch ``e`` draws fixed noise).
        save_grid: Save the grid of the first batch of every epoch.
        eval_data: A datamodule for validation and testing; ``None``: none.

    Raises:
        ConfigError: For invalid counts, sizes, weights or ``eval_data`` (as `DataFreeClassification`).
    """

    def __init__(
        self,
        num_classes: int = 6,
        class_names: Sequence[str] | None = None,
        image_size: int = 32,
        in_channels: int = 3,
        batch_size: int = 64,
        batches_per_epoch: int = 10,
        latent_dim: int = 100,
        hidden_channels: int = 128,
        generator_lr: float = 0.02,
        one_hot_weight: float = 1.0,
        activation_weight: float = 0.1,
        entropy_weight: float = 5.0,
        generator_steps: int = 1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
        save_grid: bool = True,
        eval_data: pl.LightningDataModule | None = None,
    ) -> None:
        check_image_size(image_size)  # before eval_data's size is compared with it: the more basic fix first
        super().__init__(
            num_classes=num_classes,
            class_names=class_names,
            image_size=image_size,
            in_channels=in_channels,
            batch_size=batch_size,
            batches_per_epoch=batches_per_epoch,
            mean=mean,
            std=std,
            seed=seed,
            save_grid=save_grid,
            eval_data=eval_data,
        )
        self.generator_settings = DAFLSettings(
            latent_dim=latent_dim,
            hidden_channels=hidden_channels,
            lr=generator_lr,
            one_hot_weight=one_hot_weight,
            activation_weight=activation_weight,
            entropy_weight=entropy_weight,
            generator_steps=generator_steps,
        )
        self.dafl = DAFL(image_size, in_channels, self.generator_settings, seed=seed)
        self.last_terms: dict[str, float] = {}

    def synthesize(self, epoch: int, index: int) -> tuple[Tensor, Tensor]:
        """Batch ``index`` of ``epoch``: one generator update, then its images and the teacher's classes for them."""
        teacher = self._teacher()
        noise_seed = self.seed * 1_000_003 + epoch * 10_007 + index
        noise = torch.Generator().manual_seed(noise_seed)
        z = torch.randn(self.batch_size, self.generator_settings.latent_dim, generator=noise)
        images, self.last_terms = self.dafl.step(teacher, z)
        modes = {module: module.training for module in teacher.modules()}
        try:
            with torch.no_grad():
                targets = teacher.eval()(images).argmax(dim=1)
        finally:
            for module, mode in modes.items():
                module.train(mode)
        self._save_grid(epoch, index, images)
        return images, targets

    def state_dict(self) -> dict[str, Any]:
        """The generator and its optimiser: Lightning stores them in the run's checkpoints."""
        return {"dafl": self.dafl.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the generator and its optimiser from a checkpoint (`state_dict`)."""
        if "dafl" in state_dict:
            self.dafl.load_state_dict(state_dict["dafl"])
