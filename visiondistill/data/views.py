"""Replayable augmentation views: each training image has K views, each drawn again bit for bit on demand.

A teacher-output cache is only consistent when the teacher's stored output belongs to the very image the student sees
(Beyer et al., CVPR 2022, "Knowledge distillation: a good teacher is patient and consistent"; FKD, Shen & Xing, ECCV
2022, stores soft labels per replayable crop). Here the augmentation of view ``v`` of sample ``i`` is drawn from
albumentations' generators seeded with ``view_seed(seed, i, v)`` (`Compose.set_random_seed`, albumentations 2.x), so it
is the same in any process: the main process, a DataLoader worker, a later run. `ViewSampler` picks one view per
sample per epoch (seeded by the data seed and the epoch, in the main process, so persistent workers need no state) and
yields ``(index, view)`` keys; `ReplayableViews` returns ``(image, target, view_id)`` (target: a label, a mask moved
with the image, or a box dict moved with it) with ``view_id`` the ``int64`` tensor ``[index, view]``, which a batch
carries as its third item (``[B, 2]``).

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
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from visiondistill.core.errors import ConfigError

__all__ = ["ReplayableViews", "ViewSampler", "check_num_views", "data_digest", "epoch_views", "view_seed"]


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
    """A training data set whose views are replayed from seeds: classification, segmentation or detection.

    Two ways to wrap a data set:

    - ``transform`` given (classification): the data set's ``load_image(index)`` (an ``H x W x C`` array) goes
      through ``transform(image=…)``, and the label is ``samples[index][1]``;
    - ``transform=None`` (segmentation, detection): the data set applies its own ``transform`` in ``__getitem__``
      (image and mask, or image and boxes, moved together), and ``dataset[index]`` is returned with the view id
      appended; its ``transform`` is reseeded before each call.

    Either way the transform must be an albumentations ``Compose`` not reseeded on its own (not
    ``TorchSeededCompose``): the view's seed is set before each call, so geometry and the mask or boxes replay
    together.

    Args:
        dataset: The images (``load_image`` and ``samples`` for the first way; ``__getitem__`` and ``transform``
            for the second).
        transform: The classification pipeline, or ``None`` to use ``dataset.transform``.
        num_views: Views per sample (K).
        seed: The data seed.

    Raises:
        ConfigError: For a bad ``num_views``, or ``transform=None`` with a data set without an albumentations
            ``transform``.
    """

    def __init__(self, dataset: Any, transform: A.Compose | None, num_views: int, seed: int = 0) -> None:
        self.dataset = dataset
        self.own_transform = transform is None
        self.transform = dataset.transform if transform is None else transform
        if not isinstance(self.transform, A.Compose):
            raise ConfigError(
                f"ReplayableViews: {type(dataset).__name__} has no albumentations transform to replay "
                f"(got {type(self.transform).__name__})"
            )
        self.num_views = check_num_views(num_views, owner="ReplayableViews") or 1
        self.seed = int(seed)

    def __len__(self) -> int:
        """Number of samples (not of views)."""
        return len(self.dataset)

    def sample(self, index: int, view: int) -> tuple[Any, ...]:
        """View ``view`` of sample ``index`` with its target: the same, bit for bit, whenever and wherever drawn."""
        self.transform.set_random_seed(view_seed(self.seed, index, view))
        if self.own_transform:
            return tuple(self.dataset[index])
        return self.transform(image=self.dataset.load_image(index))["image"], self.dataset.samples[index][1]

    def view(self, index: int, view: int) -> torch.Tensor:
        """The image of view ``view`` of sample ``index`` (`sample` without the target)."""
        return self.sample(index, view)[0]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, ...]:
        """``(image, target, view_id)`` for a ``(index, view)`` key (`ViewSampler`); a plain index means view 0."""
        index, view = (int(key[0]), int(key[1])) if isinstance(key, tuple | list) else (int(key), 0)
        if not 0 <= view < self.num_views:
            raise IndexError(f"view {view} of sample {index}: this data set has {self.num_views} views per sample")
        return (*self.sample(index, view), torch.tensor([index, view], dtype=torch.int64))

    def view_fingerprint(self) -> dict[str, Any]:
        """What a stored teacher output depends on besides the teacher: the images, K, the seed and the transform.

        Returns:
            ``{"data": `data_digest` of the data set, "num_samples", "num_views", "seed", "transform": sha256 of
            the pipeline's albumentations serialisation}``.
        """
        transform = json.dumps(A.to_dict(self.transform), sort_keys=True, default=str)
        return {
            "data": data_digest(self.dataset),
            "num_samples": len(self),
            "num_views": self.num_views,
            "seed": self.seed,
            "transform": hashlib.sha256(transform.encode()).hexdigest(),
        }


def _file_row(path: Any, root: Any) -> str:
    """A file as ``relative name + size`` (the size catches a rewritten file of the same name)."""
    if not isinstance(path, Path):
        return str(path)
    try:
        name = str(path.relative_to(root)) if root is not None else str(path)
    except ValueError:
        name = str(path)
    return f"{name}:{path.stat().st_size if path.exists() else -1}"


def _sample_row(image: Any, target: Any, root: Any) -> str:
    if isinstance(target, Path):  # a mask file
        return f"{_file_row(image, root)}\0{_file_row(target, root)}"
    name = str(image.relative_to(root)) if root is not None else str(image)
    size = image.stat().st_size if hasattr(image, "stat") else -1
    return f"{name}\0{target}\0{size}"  # the row of a classification sample (format of the first caches)


def data_digest(dataset: Any) -> str:
    """sha256 of what a data set's training samples are made of: files (relative names, sizes) and targets.

    ``samples`` of ``(image, label)`` (classification) or ``(image, mask)`` (segmentation) pairs are read row by
    row; a COCO detection data set (``images`` entries and an ``annotation_file``) adds the annotation file's bytes
    (boxes and labels) and each image's file name and size.
    """
    digest = hashlib.sha256()
    root = getattr(dataset, "root", None)
    annotation = getattr(dataset, "annotation_file", None)
    if annotation is not None and Path(annotation).is_file():
        digest.update(b"annotations\0" + Path(annotation).read_bytes())
    if hasattr(dataset, "samples"):
        rows = (_sample_row(image, target, root) for image, target in dataset.samples)
    else:
        folder = Path(getattr(dataset, "image_dir", "."))
        rows = (_file_row(folder / entry["file_name"], folder) for entry in getattr(dataset, "images", []))
    for row in rows:
        digest.update(row.encode() + b"\n")
    return digest.hexdigest()
