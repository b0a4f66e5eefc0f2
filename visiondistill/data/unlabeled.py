"""Learning from unlabeled images: a folder of images without labels, or labels withheld from part of a split.

A datamodule with unlabeled images (``unlabeled_dir``, or ``labeled_fraction < 1``) returns from
``train_dataloader`` a `CombinedLoader` of two loaders in ``"max_size_cycle"`` mode, whose batches are dicts
``{"labeled": (images, targets), "unlabeled": images}``. One **epoch** is one pass over the longer of the two
loaders (usually the unlabeled one); the shorter restarts as often as needed, so every step has both parts. In a
DDP run Lightning gives each of the two loaders its own `DistributedSampler`, which pads every rank to the same
number of samples, so every rank has the same number of steps (no rank waits for another at the epoch's end).

The task loss of a `visiondistill.tasks` module sees the labeled part only; the distillation terms see both
(`visiondistill.core.protocol.split_training_batch`). Validation, test and explanation probes read the labeled
validation data as before. See docs/unlabeled.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from visiondistill.core.errors import ConfigError
from visiondistill.data.errors import DataError, MissingDataError
from visiondistill.data.images import IMAGE_EXTENSIONS, read_image

__all__ = [
    "ImagesOnly",
    "attach_unlabeled",
    "UnlabeledImageDataset",
    "check_labeled_fraction",
    "segmentation_strata",
    "stratified_split",
]


def check_labeled_fraction(value: Any, owner: str = "datamodule") -> float:
    """Validates ``labeled_fraction``: a number in (0, 1].

    Raises:
        ConfigError: For anything else, naming the value.

    Example::

        >>> check_labeled_fraction(0.05), check_labeled_fraction(1)
        (0.05, 1.0)
    """
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        fraction = float("nan")
    if isinstance(value, bool) or not (0.0 < fraction <= 1.0):
        raise ConfigError(
            f"{owner}: labeled_fraction must be a number in (0, 1] (the share of training images that keep their "
            f"labels), got {value!r}; e.g. labeled_fraction: 0.05, or 1 to keep every label"
        )
    return fraction


class UnlabeledImageDataset(Dataset):
    """Every image file under a folder (sub-folders included), read with `read_image`, without labels.

    Args:
        root: The folder (``unlabeled_dir``).
        transform: An albumentations pipeline called as ``transform(image=…)["image"]`` (the datamodule's train
            transform), or ``None`` for a plain ``C×H×W`` tensor.
        in_channels: Channels to read (1 or 3).
        intensity_window: ``[low, high]`` mapped to [0, 1] (as for the labeled images).

    Raises:
        MissingDataError: When ``root`` is not a folder.
        DataError: When it holds no image file.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[..., dict[str, Any]] | None = None,
        in_channels: int = 3,
        intensity_window: Sequence[float] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise MissingDataError(
                f"unlabeled_dir '{self.root}' is not a folder; point unlabeled_dir at a folder of images "
                "(sub-folders are read too), or leave it out",
                path=self.root,
            )
        self.files = sorted(
            path
            for path in self.root.rglob("*")
            if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()
        )
        if not self.files:
            raise DataError(
                f"unlabeled_dir '{self.root}' holds no images ({', '.join(IMAGE_EXTENSIONS)}); add images or "
                "leave unlabeled_dir out"
            )
        self.transform, self.in_channels, self.intensity_window = transform, in_channels, intensity_window

    def __len__(self) -> int:
        """Number of images."""
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        """Image ``index`` as a ``C×H×W`` float tensor, through the transform."""
        image = read_image(self.files[index], channels=self.in_channels, window=self.intensity_window)
        if self.transform is not None:
            return self.transform(image=image)["image"]
        return torch.from_numpy(image).permute(2, 0, 1).contiguous()


class ImagesOnly(Dataset):
    """The images of some samples of a labeled dataset, labels dropped (the withheld part of ``labeled_fraction``).

    Args:
        dataset: A dataset of ``(image, target, …)`` samples.
        indices: The samples to take.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        """Number of images."""
        return len(self.indices)

    def __getitem__(self, index: int) -> torch.Tensor:
        """The image of sample ``indices[index]``."""
        return self.dataset[self.indices[index]][0]


def stratified_split(
    strata: Sequence[int], fraction: float, seed: int, names: Sequence[str] | None = None
) -> tuple[list[int], list[int]]:
    """Splits sample indices into a labeled and an unlabeled part, ``fraction`` of each stratum labeled.

    Each stratum (class) keeps ``round(fraction × its size)`` labeled samples, drawn with a generator seeded by
    ``seed``: the same seed gives the same split on every machine and every rank.

    Args:
        strata: The stratum of every sample (its class, or for masks `segmentation_strata`).
        fraction: Share labeled, in (0, 1].
        seed: Seed of the draw.
        names: Names of the strata, for messages.

    Returns:
        The labeled and the unlabeled indices, each sorted.

    Raises:
        DataError: When a stratum would keep no labeled sample (naming it and the smallest fraction that keeps one).

    Example::

        >>> stratified_split([0, 0, 0, 0, 1, 1, 1, 1], 0.5, seed=0)[0].__len__()
        4
    """
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    labeled: list[int] = []
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        keep = int(math.floor(fraction * len(members) + 0.5))
        if keep == 0:
            name = names[int(stratum)] if names is not None and 0 <= stratum < len(names) else str(stratum)
            raise DataError(
                f"labeled_fraction {fraction:g} keeps no labeled image of class '{name}' ({len(members)} training "
                f"images): every class needs labels; raise labeled_fraction to at least {0.5 / len(members):.3g}"
            )
        labeled.extend(int(i) for i in rng.permutation(members)[:keep])
    labeled.sort()
    chosen = set(labeled)
    return labeled, [i for i in range(len(strata)) if i not in chosen]


def segmentation_strata(present: Sequence[Sequence[int]], num_classes: int) -> list[int]:
    """One stratum per mask: the rarest class (in the fewest masks) among the classes the mask holds.

    Stratifying on it keeps the rare classes' images in the labeled part in proportion; a mask of background only
    (class 0) is its own stratum.

    Args:
        present: The classes each mask holds (e.g. ``np.unique(mask)``).
        num_classes: Number of classes, background (0) included; other values (an ``ignore_index``) are skipped.

    Example::

        >>> segmentation_strata([[0, 1], [0, 1, 2], [0]], num_classes=3)
        [1, 2, 0]
    """
    present = [[int(c) for c in classes if 0 <= int(c) < num_classes] for classes in present]
    counts = np.zeros(num_classes, dtype=np.int64)
    for classes in present:
        counts[classes] += 1
    strata = []
    for classes in present:
        foreground = [c for c in classes if c != 0]
        strata.append(min(foreground, key=lambda c: (counts[c], c)) if foreground else 0)
    return strata


def attach_unlabeled(datamodule: Any) -> None:
    """Gives a datamodule whose ``train_dataset`` was just built its ``unlabeled_dataset``.

    With ``labeled_fraction < 1`` the training split is split (`stratified_split`, seeded by ``labeled_seed``):
    ``train_dataset`` becomes its labeled part and the rest, labels dropped, becomes unlabeled. Images of
    ``unlabeled_dir`` are added to the unlabeled part, read with the training split's transform, channels and
    intensity window.

    Raises:
        ConfigError: When ``labeled_fraction < 1`` on a dataset with neither ``targets`` nor masks.
        DataError: When a class would keep no label, or ``unlabeled_dir`` holds no image.
        MissingDataError: When ``unlabeled_dir`` is not a folder.
    """
    train = datamodule.train_dataset
    fraction = float(getattr(datamodule, "labeled_fraction", 1.0))
    folder = getattr(datamodule, "unlabeled_dir", None)
    parts: list[Dataset] = []
    if fraction < 1.0:
        names = list(getattr(datamodule, "class_names", None) or []) or None
        seed = getattr(datamodule, "labeled_seed", None)
        present = _mask_classes(train) if hasattr(train, "load_mask") else None
        strata = segmentation_strata(present, train.num_classes) if present is not None else _targets(train, datamodule)
        labeled, unlabeled = stratified_split(strata, fraction, datamodule.seed if seed is None else seed, names)
        if present is not None:
            _check_every_class_labeled(present, labeled, train.num_classes, fraction, names)
        datamodule.train_dataset = Subset(train, labeled)
        if unlabeled:
            parts.append(ImagesOnly(train, unlabeled))
    if folder is not None:
        parts.append(
            UnlabeledImageDataset(
                folder,
                transform=getattr(train, "transform", None),
                in_channels=datamodule.in_channels,
                intensity_window=getattr(datamodule, "intensity_window", None),
            )
        )
    datamodule.unlabeled_dataset = (ConcatDataset(parts) if len(parts) > 1 else parts[0]) if parts else None


def _targets(dataset: Dataset, datamodule: Any) -> list[int]:
    if hasattr(dataset, "targets"):
        return [int(target) for target in dataset.targets]
    raise ConfigError(
        f"{type(datamodule).__name__}: labeled_fraction needs a training set with class targets or masks, and "
        f"{type(dataset).__name__} has neither; leave labeled_fraction at 1 and give unlabeled_dir instead"
    )


def _mask_classes(dataset: Any) -> list[list[int]]:
    return [[int(c) for c in np.unique(dataset.load_mask(i))] for i in range(len(dataset))]


def _check_every_class_labeled(
    present: Sequence[Sequence[int]], labeled: Sequence[int], num_classes: int, fraction: float, names: Any
) -> None:
    seen_all = {c for classes in present for c in classes if 0 <= c < num_classes}
    seen_labeled = {c for index in labeled for c in present[index]}
    missing = sorted(seen_all - seen_labeled)
    if missing:
        shown = [names[c] if names is not None and c < len(names) else str(c) for c in missing]
        raise DataError(
            f"labeled_fraction {fraction:g} keeps no labeled mask with class {shown}: every class needs labels; "
            "raise labeled_fraction"
        )
