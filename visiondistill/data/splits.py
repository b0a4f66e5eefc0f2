"""The part every folder-per-split datamodule shares: split folders, per-stage datasets and their dataloaders."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.combined_loader import CombinedLoader
from torch.utils.data import DataLoader, Dataset, Subset

from visiondistill.core.errors import ConfigError
from visiondistill.data.errors import MissingDataError
from visiondistill.data.loading import NumWorkers, loader_kwargs, local_world_size
from visiondistill.data.unlabeled import attach_unlabeled, check_labeled_fraction
from visiondistill.data.views import ReplayableViews, ViewSampler


class SplitFolderDataModule(pl.LightningDataModule):
    """Base datamodule for data laid out as ``image_root/{train,val[,test]}/…``.

    Subclasses set ``data_dir``, ``in_channels``, ``batch_size``, ``num_workers`` and ``seed`` in ``__init__`` and
    implement `_dataset`; this class builds the datasets each stage needs (testing falls back to ``val`` without a
    ``test`` folder) and the dataloaders (training batches shuffled with a generator seeded by ``seed``).
    """

    data_dir: Path
    in_channels: int
    batch_size: int
    num_workers: NumWorkers
    seed: int
    train_dataset: Dataset | None = None
    val_dataset: Dataset | None = None
    test_dataset: Dataset | None = None
    #: Learning from unlabeled images (`visiondistill.data.unlabeled`): set by `init_unlabeled`.
    unlabeled_dir: Path | None = None
    labeled_fraction: float = 1.0
    labeled_seed: int | None = None
    unlabeled_dataset: Dataset | None = None

    @property
    def in_chans(self) -> int:
        """Deprecated alias of ``in_channels``, for code written before the rename."""
        warnings.warn(
            f"{type(self).__name__}.in_chans is deprecated: read in_channels instead", FutureWarning, stacklevel=2
        )
        return self.in_channels

    def init_unlabeled(
        self, unlabeled_dir: str | None = None, labeled_fraction: float = 1.0, labeled_seed: int | None = None
    ) -> None:
        """Records the unlabeled-image settings (see `visiondistill.data.unlabeled` and docs/unlabeled.md).

        Args:
            unlabeled_dir: A folder of images without labels, read like the training images.
            labeled_fraction: Share of the training split that keeps its labels (a stratified draw); the rest is
                used as unlabeled images. 1 keeps every label.
            labeled_seed: Seed of that draw (default: ``seed``).

        Raises:
            ConfigError: For a ``labeled_fraction`` outside (0, 1].
        """
        self.unlabeled_dir = Path(unlabeled_dir) if unlabeled_dir is not None else None
        self.labeled_fraction = check_labeled_fraction(labeled_fraction, owner=type(self).__name__)
        self.labeled_seed = labeled_seed

    @property
    def image_root(self) -> Path:
        """The folder that holds the split folders."""
        return self.data_dir

    def split_dir(self, split: str) -> Path:
        """Return the folder of one split (``train``, ``val``, ``test``)."""
        return self.image_root / split

    def missing_data_hint(self) -> str:
        """How to create missing data; appended to `MissingDataError` messages."""
        return "Check data_dir: it must hold train/ and val/ split folders."

    @property
    def test_split(self) -> str:
        """``"test"`` when that folder exists, else ``"val"``."""
        return "test" if self.split_dir("test").is_dir() else "val"

    def _require_split(self, split: str) -> Path:
        if not self.image_root.is_dir():
            raise MissingDataError(
                f"Data folder '{self.image_root}' does not exist. {self.missing_data_hint()}", path=self.image_root
            )
        folder = self.split_dir(split)
        if not folder.is_dir():
            raise MissingDataError(f"Split folder '{folder}' does not exist. {self.missing_data_hint()}", path=folder)
        return folder

    def _dataset(self, split: str, train: bool) -> Dataset:
        """The dataset of one split (``train`` selects the augmenting transform)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets a stage needs (``fit``, ``validate``, ``test``, ``predict``, or ``None`` for all)."""
        if stage in ("fit", None) and self.train_dataset is None:
            self.train_dataset = self._dataset("train", train=True)
            attach_unlabeled(self)  # labeled_fraction and unlabeled_dir; a no-op without them
        if stage in ("fit", "validate", None) and self.val_dataset is None:
            self.val_dataset = self._dataset("val", train=False)
        if stage in ("test", "predict", None) and self.test_dataset is None:
            split = self.test_split
            if split == "val":
                rank_zero_info(f"No '{self.split_dir('test')}' folder: testing and predicting on the val split.")
            self.test_dataset = self._dataset(split, train=False)

    def loader_settings(self) -> dict[str, Any]:
        """The DataLoader's worker, pinning and prefetching arguments (`visiondistill.data.loading.loader_kwargs`).

        ``num_workers: auto`` is resolved here, when the trainer (and so the number of processes per machine) is
        known; batches are pinned when the trainer trains on a CUDA device (without a trainer: when CUDA is available).
        """
        trainer = self._trainer_or_none()
        pin_memory = trainer.strategy.root_device.type == "cuda" if trainer is not None else None
        return loader_kwargs(self.num_workers, world_size=local_world_size(trainer), pin_memory=pin_memory)

    def _trainer_or_none(self) -> Any | None:
        try:
            return self.trainer
        except RuntimeError:  # some Lightning versions raise for a datamodule that is not attached
            return None

    def loader_order(self, dataset: Dataset, shuffle: bool) -> dict[str, Any]:
        """The DataLoader's order arguments: a seeded shuffle, or a `ViewSampler` over replayable views.

        A `ReplayableViews` training set is read through a `ViewSampler` (every sample once per epoch, in the
        epoch's view; Lightning calls its ``set_epoch``), so its batches carry ``[index, view]`` ids.

        Raises:
            ConfigError: For replayable views together with unlabeled images (not covered yet).
        """
        if isinstance(dataset, ReplayableViews):
            if getattr(self, "unlabeled_dataset", None) is not None:
                raise ConfigError(
                    f"{type(self).__name__}: num_views (replayable views for a teacher-output cache) does not cover "
                    "unlabeled images yet; drop num_views or unlabeled_dir"
                )
            return {"sampler": ViewSampler(len(dataset), dataset.num_views, seed=self.seed, shuffle=shuffle)}
        return {"shuffle": shuffle, "generator": torch.Generator().manual_seed(self.seed) if shuffle else None}

    def _loader(self, dataset: Dataset | None, stage: str, shuffle: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup({stage!r}) must run before its {stage} dataloader.")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            **self.loader_order(dataset, shuffle),
            **self.loader_settings(),
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        """Shuffled, augmented training batches; with unlabeled images, ``{"labeled": …, "unlabeled": …}`` batches.

        With unlabeled images the two loaders are combined in ``"max_size_cycle"`` mode: an epoch is one pass over
        the longer one, the shorter restarts as needed (`visiondistill.data.unlabeled`).
        """
        labeled = self._loader(self.train_dataset, "fit", shuffle=True)
        if self.unlabeled_dataset is None:
            return labeled
        unlabeled = self._loader(self.unlabeled_dataset, "fit", shuffle=True)
        return CombinedLoader({"labeled": labeled, "unlabeled": unlabeled}, mode="max_size_cycle")

    def calibration_dataloader(self, count: int, seed: int = 0) -> DataLoader:
        """``count`` training images drawn at random and read without augmentation: what a quantizer calibrates on.

        Unaugmented, because the quantized model will see test-time images; a seeded draw rather than the first
        files, because a folder sorted by class would calibrate on one class; so two exports of one checkpoint
        calibrate on the same images and give the same INT8 model.

        Args:
            count: How many images (all of them when the split has fewer).
            seed: Seed of the draw.
        """
        dataset = self._dataset("train", train=False)
        chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
        return self._loader(Subset(dataset, chosen.tolist()), "calibrate")

    def val_dataloader(self) -> DataLoader:
        """Validation batches in file order."""
        return self._loader(self.val_dataset, "validate")

    def test_dataloader(self) -> DataLoader:
        """Test batches (the val split when there is no test folder)."""
        return self._loader(self.test_dataset, "test")

    def predict_dataloader(self) -> DataLoader:
        """The test batches, for ``predict``."""
        return self._loader(self.test_dataset, "predict")
