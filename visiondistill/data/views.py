"""Replayable augmentation views: each training image has K views, each drawn again bit for bit on demand.

A teacher-output cache is only consistent when the teacher's stored output belongs to the very image the student sees
(Beyer et al., CVPR 2022, "Knowledge distillation: a good teacher is patient and consistent"; FKD, Shen & Xing, ECCV
2022, stores soft labels per replayable crop). Here the augmentation of view ``v`` of sample ``i`` is drawn from
albumentations' generators seeded with ``view_seed(seed, i, v)`` (`Compose.set_random_seed`, albumentations 2.x), so it
is the same in any process: the main process, a DataLoader worker, a later run. `ViewSampler` picks one view per
sample per epoch (seeded by the data seed and the epoch, in the main process, so persistent workers need no state) and
yields ``(index, view)`` keys; `ReplayableViews` returns ``(image, label, view_id)`` with ``view_id`` the
``int64`` tensor ``[index, view]``, which a batch carries as its third item (``[B, 2]``).

Example::

    >>> import numpy as np
    >>> view_seed(0, 5, 1) == view_seed(0, 5, 1), view_seed(0, 5, 1) == view_seed(0, 5, 2)
    (True, False)
    >>> sampler = ViewSampler(4, num_views=3, seed=0)
    >>> sorted(index for index, _ in sampler)
    [0, 1, 2, 3]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from visiondistill.core.errors import ConfigError

__all__ = ["ReplayableViews", "ViewSampler", "check_num_views", "epoch_views", "view_seed"]


def check_num_views(value: Any, owner: str = "datamodule") -> int | None:
    """Validates a ``num_views`` setting: ``None`` (no replayable views) or an int >= 1.

    Raises:
        ConfigError: For anything else, naming the value.
    """
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError(
        f"{owner}: num_views must be a whole number >= 1 (augmentation views per training image) or null, got "
        f"{value!r}; e.g. num_views: 8"
    )


def _seed_of(*parts: int) -> int:
    """A 32-bit seed from integers, the same in every process and Python version (no ``hash()`` salt)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint32)[0])


def view_seed(seed: int, index: int, view: int) -> int:
    """The augmentation seed of view ``view`` of sample ``index`` in a data set seeded with ``seed``."""
    return _seed_of(seed, index, view)


def epoch_views(seed: int, epoch: int, num_samples: int, num_views: int) -> torch.Tensor:
    """The view each sample is shown in ``epoch``: ``int64`` tensor ``[num_samples]``, values in ``[0, num_views)``."""
    generator = torch.Generator().manual_seed(_seed_of(seed, epoch, 1))
    return torch.randint(0, num_views, (num_samples,), generator=generator)


class ViewSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, view)`` keys: every sample once per epoch, in a seeded order, with the epoch's view.

    Lightning calls `set_epoch` before each training epoch (as for a ``DistributedSampler``), so a resumed run shows
    the same views in the same epochs.

    Args:
        num_samples: Samples in the data set.
        num_views: Views per sample (K).
        seed: The data seed (order and views).
        shuffle: Shuffle the order each epoch (else index order).
    """

    def __init__(self, num_samples: int, num_views: int, seed: int = 0, shuffle: bool = True) -> None:
        self.num_samples, self.num_views, self.seed, self.shuffle = int(num_samples), int(num_views), int(seed), shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order and views the next iteration yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Samples per epoch."""
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """The epoch's ``(index, view)`` keys."""
        views = epoch_views(self.seed, self.epoch, self.num_samples, self.num_views).tolist()
        if self.shuffle:
            generator = torch.Generator().manual_seed(_seed_of(self.seed, self.epoch, 2))
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = range(self.num_samples)
        for index in order:
            yield index, views[index]


class ReplayableViews(Dataset):
    """A classification data set whose training views are replayed from seeds.

    Args:
        dataset: The images: ``load_image(index)`` (an ``H x W x C`` array) and ``samples`` (``(path, label)``
            pairs), as `visiondistill.data.classification.ImageFolderDataset` has.
        transform: An albumentations ``Compose`` not reseeded on its own (not ``TorchSeededCompose``): the view's seed
            is set before each call.
        num_views: Views per sample (K).
        seed: The data seed.

    Raises:
        ConfigError: For a bad ``num_views``.
    """

    def __init__(self, dataset: Any, transform: A.Compose, num_views: int, seed: int = 0) -> None:
        self.dataset, self.transform = dataset, transform
        self.num_views = check_num_views(num_views, owner="ReplayableViews") or 1
        self.seed = int(seed)

    def __len__(self) -> int:
        """Number of samples (not of views)."""
        return len(self.dataset.samples)

    def view(self, index: int, view: int) -> torch.Tensor:
        """View ``view`` of sample ``index``: the same tensor, bit for bit, whenever and wherever it is drawn."""
        self.transform.set_random_seed(view_seed(self.seed, index, view))
        return self.transform(image=self.dataset.load_image(index))["image"]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, torch.Tensor]:
        """``(image, label, view_id)`` for a ``(index, view)`` key (`ViewSampler`); a plain index means view 0."""
        index, view = (int(key[0]), int(key[1])) if isinstance(key, tuple | list) else (int(key), 0)
        if not 0 <= view < self.num_views:
            raise IndexError(f"view {view} of sample {index}: this data set has {self.num_views} views per sample")
        return self.view(index, view), self.dataset.samples[index][1], torch.tensor([index, view], dtype=torch.int64)

    def view_fingerprint(self) -> dict[str, Any]:
        """What a stored teacher output depends on besides the teacher: the images, K, the seed and the transform.

        Returns:
            ``{"data": sha256 of (relative path, label, file size) per sample, "num_samples", "num_views", "seed",
            "transform": sha256 of the pipeline's albumentations serialisation}``.
        """
        root = getattr(self.dataset, "root", None)
        data = hashlib.sha256()
        for path, label in self.dataset.samples:
            name = str(path.relative_to(root)) if root is not None else str(path)
            size = path.stat().st_size if hasattr(path, "stat") else -1
            data.update(f"{name}\0{label}\0{size}\n".encode())
        transform = json.dumps(A.to_dict(self.transform), sort_keys=True, default=str)
        return {
            "data": data.hexdigest(),
            "num_samples": len(self),
            "num_views": self.num_views,
            "seed": self.seed,
            "transform": hashlib.sha256(transform.encode()).hexdigest(),
        }
