"""Image classification data: an ImageFolder dataset and the Lightning data modules built on it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import Dataset

from visiondistill.core.errors import ConfigError
from visiondistill.data.channels import resolve_in_channels
from visiondistill.data.errors import DataError, MissingDataError
from visiondistill.data.generated import GeneratedShapes
from visiondistill.data.images import IMAGE_EXTENSIONS, check_image, check_window, read_image
from visiondistill.data.loading import NumWorkers, check_num_workers
from visiondistill.data.shapes import SHAPE_CLASSES
from visiondistill.data.splits import SplitFolderDataModule
from visiondistill.data.transforms import classification_transforms
from visiondistill.data.views import ReplayableViews, check_num_views

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderClassification", "ImageFolderDataset", "ShapesClassification"]


def find_class_folders(root: str | Path) -> list[str]:
    """Return the sorted names of the visible sub-folders of ``root`` (the ImageFolder class names).

    Args:
        root: A split folder such as ``data/train``.

    Returns:
        The class names, sorted.

    Raises:
        MissingDataError: When ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingDataError(f"Image folder '{root}' does not exist.", path=root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


class ImageFolderDataset(Dataset):
    """Images in ``root/<class_name>/**/<file>`` with the class given by the folder.

    Args:
        root: Split folder holding one sub-folder per class.
        transform: Albumentations-style callable, ``transform(image=array)["image"]``; ``None`` returns a ``float32``
            tensor ``C x H x W`` in [0, 1].
        in_channels: 3 loads images as RGB, 1 as grayscale (``H x W x 1`` arrays).
        class_names: Fixed class order (use the training split's to keep labels equal across splits). Folders of
            other names are an error; listed classes without images only warn. ``None`` = sorted folder names,
            each of which must hold images.
        extensions: File name endings that count as images (case-insensitive).
        in_chans: Deprecated spelling of ``in_channels``.
        intensity_window: ``[low, high]`` in the files' units, mapped to [0, 1] instead of the type's range (see
            `visiondistill.data.images`).

    Raises:
        MissingDataError: When ``root`` does not exist.
        DataError: When there are no class folders or images, an unlisted class folder, or (without
            ``class_names``) an empty class folder.

    Example::

        >>> import tempfile, numpy as np
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "cat").mkdir()
        >>> Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "cat" / "0.png")
        >>> dataset = ImageFolderDataset(root)
        >>> image, label = dataset[0]
        >>> tuple(image.shape), label, dataset.class_names
        ((3, 8, 8), 0, ['cat'])
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[..., dict[str, Any]] | None = None,
        in_channels: int = 3,
        class_names: Sequence[str] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        in_chans: int | None = None,
        intensity_window: Sequence[float] | None = None,
    ) -> None:
        self.in_channels = resolve_in_channels(in_channels, in_chans, owner=type(self).__name__)
        self.intensity_window = check_window(intensity_window)
        self.root = Path(root)
        self.transform = transform
        self.extensions = tuple(e.lower() for e in extensions)
        folders = find_class_folders(self.root)
        inferred = class_names is None
        if class_names is None:
            if not folders:
                raise DataError(
                    f"No class folders in '{self.root}': an ImageFolder split needs one sub-folder per class "
                    "(e.g. train/cat/001.png)."
                )
            class_names = folders
        else:
            unknown = sorted(set(folders) - set(class_names))
            if unknown:
                raise DataError(
                    f"'{self.root}' holds class folders {unknown} that are not among the expected classes "
                    f"{list(class_names)}; remove them or fix the class list."
                )
        self.class_names = list(class_names)
        self.samples: list[tuple[Path, int]] = []
        empty = []
        for label, name in enumerate(self.class_names):
            files = self._scan(self.root / name)
            if not files:
                empty.append(name)
            self.samples.extend((path, label) for path in files)
        if not self.samples:
            raise DataError(
                f"No images ({', '.join(self.extensions)}) found in the class folders of '{self.root}'; "
                "regenerate or re-download the data."
            )
        if empty and inferred:
            raise DataError(
                f"Class folder(s) {empty} in '{self.root}' hold no images ({', '.join(self.extensions)}); "
                "add images or delete the empty folders."
            )
        if empty:
            rank_zero_warn(f"'{self.root}' has no images of class(es) {empty}.")

    def _scan(self, folder: Path) -> list[Path]:
        if not folder.is_dir():
            return []
        return sorted(
            p
            for p in folder.rglob("*")
            if p.suffix.lower() in self.extensions and not p.name.startswith(".") and p.is_file()
        )

    @property
    def targets(self) -> list[int]:
        """The label of every sample, in order."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        """Number of images."""
        return len(self.samples)

    def load_image(self, index: int) -> np.ndarray:
        """Decode image ``index`` as ``float32`` in [0, 1], ``H x W x in_channels`` (`read_image`: any bit depth).

        Raises:
            CorruptImageError: When the file cannot be decoded; the message names the file.
            UnsupportedImageError: When it cannot be represented (a volume, > 4 channels …).
        """
        return read_image(self.samples[index][0], channels=self.in_channels, window=self.intensity_window)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Return ``(image tensor C x H x W, label)``."""
        image = self.load_image(index)
        label = self.samples[index][1]
        if self.transform is not None:
            return self.transform(image=image)["image"], label
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), label

    def verify(self) -> None:
        """Check that every file is a readable image (`check_image`: headers and checksums, no full decode).

        Raises:
            CorruptImageError: For the first unreadable file, naming it.
            UnsupportedImageError: For the first file that cannot be represented (a volume, > 4 channels …).
        """
        for path, _ in self.samples:
            check_image(path)


class ImageFolderClassification(SplitFolderDataModule):
    """Classification data module over ``data_dir/{train,val,test}/<class_name>/<image>``.

    Labels follow the sorted class folders of ``train`` (or ``class_names``), for every split. Without a ``test``
    folder the test and predict loaders use ``val``.

    Args:
        data_dir: Folder holding the ``train`` and ``val`` (and optionally ``test``) splits.
        image_size: Images are resized to ``image_size x image_size``.
        batch_size: Images per batch.
        num_workers: DataLoader worker processes, or ``auto`` (`visiondistill.data.loading`: the machine's cores).
        in_channels: 3 loads RGB, 1 grayscale.
        augment: Augment training images (see :func:`~visiondistill.data.transforms.classification_transforms`).
        verify_images: In ``setup``, check every file is a readable image, so a corrupt file fails at once and by
            name rather than mid-epoch.
        seed: Seed of the training shuffle order.
        class_names: Fixed class order instead of the sorted folder names.
        in_chans: Deprecated spelling of ``in_channels`` (configs written before the rename).
        intensity_window: ``[low, high]`` in the files' units (raw counts, or Hounsfield units of a CT DICOM),
            mapped to [0, 1] instead of each file's type range; e.g. ``[0, 4095]`` for 12-bit data in 16-bit PNGs
            (see `visiondistill.data.images`).
        unlabeled_dir: A folder of images without labels, read with the training transform; their batches are
            interleaved with the labeled ones for the distillation terms (docs/unlabeled.md).
        labeled_fraction: Share of the training images that keep their labels (a seeded, stratified draw); the
            rest are used as unlabeled images. 1 keeps every label.
        labeled_seed: Seed of that draw (default: ``seed``).
        num_views: Replayable augmentation views per training image (K, `visiondistill.data.views`): each epoch
            shows every image in one of its K views, picked by ``seed`` and the epoch, and training batches carry
            the ``[index, view]`` ids a teacher-output cache (`visiondistill.distill.TeacherOutputCache`) keys on.
            ``None``: a fresh random augmentation every time (no cache possible).

    Raises:
        ValueError: For non-positive sizes, negative workers or ``in_channels`` other than 1 or 3.
        ConfigError: For an ``intensity_window`` that is not ``[low, high]`` with ``low < high``, or a bad
            ``num_views``.

    Example::

        >>> dm = ImageFolderClassification("data/my_images", image_size=32)  # doctest: +SKIP
        >>> dm.setup("fit")  # doctest: +SKIP
        >>> images, labels = next(iter(dm.train_dataloader()))  # doctest: +SKIP
    """

    def __init__(
        self,
        data_dir: str,
        image_size: int = 64,
        batch_size: int = 64,
        num_workers: NumWorkers = "auto",
        in_channels: int = 3,
        augment: bool = True,
        verify_images: bool = True,
        seed: int = 0,
        class_names: list[str] | None = None,
        in_chans: int | None = None,
        intensity_window: list[float] | None = None,
        unlabeled_dir: str | None = None,
        labeled_fraction: float = 1.0,
        labeled_seed: int | None = None,
        num_views: int | None = None,
    ) -> None:
        super().__init__()
        num_workers = check_num_workers(num_workers, owner=type(self).__name__)
        self.num_views = check_num_views(num_views, owner=type(self).__name__)
        if image_size <= 0 or batch_size <= 0:
            raise ConfigError(
                f"need image_size > 0 and batch_size > 0, got image_size={image_size!r}, batch_size={batch_size!r}"
            )
        in_channels = resolve_in_channels(in_channels, in_chans, owner=type(self).__name__)
        self.save_hyperparameters(ignore=["in_chans"])  # the resolved in_channels is what re-creates this module
        self.data_dir = Path(data_dir)
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.in_channels = in_channels
        self.augment = augment
        self.verify_images = verify_images
        self.seed = seed
        self._class_names = list(class_names) if class_names is not None else None
        self.intensity_window = check_window(intensity_window)
        self.init_unlabeled(unlabeled_dir, labeled_fraction, labeled_seed)
        self.train_dataset: ImageFolderDataset | None = None
        self.val_dataset: ImageFolderDataset | None = None
        self.test_dataset: ImageFolderDataset | None = None

    def missing_data_hint(self) -> str:
        """How to create missing data; appended to :class:`MissingDataError` messages."""
        return "Check data_dir: it must hold train/<class>/... and val/<class>/... image folders."

    @property
    def class_names(self) -> list[str]:
        """Class names in label order (the training split's sorted folder names unless given)."""
        if self._class_names is None:
            self._class_names = find_class_folders(self._require_split("train"))
            if not self._class_names:
                raise DataError(f"No class folders in '{self.split_dir('train')}'.")
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def _dataset(self, split: str, train: bool) -> ImageFolderDataset | ReplayableViews:
        views = train and self.num_views is not None
        transform = classification_transforms(
            self.image_size, train=train and self.augment, in_channels=self.in_channels, replayable=views
        )
        dataset = ImageFolderDataset(
            self._require_split(split),
            transform=None if views else transform,
            in_channels=self.in_channels,
            class_names=self.class_names,
            intensity_window=self.intensity_window,
        )
        if self.verify_images:
            dataset.verify()
        return ReplayableViews(dataset, transform, self.num_views, seed=self.seed) if views else dataset


class ShapesClassification(GeneratedShapes, ImageFolderClassification):
    """Classification on the synthetic shapes, generated into ``data_dir`` on first use.

    Reads ``data_dir/classification/{train,val,test}/<shape>/`` with labels in ``SHAPE_CLASSES`` order.
    ``prepare_data`` writes only the classification task (about 5 s for the default 4000 images on one core); the
    other tasks can be added later to the same ``data_dir`` with ``visiondistill synth`` and the same parameters, and
    are then generated from the very same samples. The parameters are checked against ``data_dir/meta.json`` so a
    data set generated with other settings is never used silently.

    Args:
        data_dir: Root of the generated data set.
        image_size: Image size to generate and load.
        batch_size: Images per batch.
        num_workers: DataLoader worker processes, or ``auto`` (`visiondistill.data.loading`).
        in_channels: 3 generates RGB images, 1 grayscale.
        augment: Augment training images.
        generate: Generate the data when missing; when false a missing data set is an error.
        num_train: Training images.
        num_val: Validation images.
        num_test: Test images (0: test on val).
        difficulty: Generator difficulty (0 clean, 1 benchmark).
        seed: Data-set seed (also seeds the shuffle order).
        verify_images: Check every file is readable in ``setup``.
        in_chans: Deprecated spelling of ``in_channels`` (configs written before the rename).
        unlabeled_dir: A folder of images without labels, read with the training transform; their batches are
            interleaved with the labeled ones for the distillation terms (docs/unlabeled.md).
        labeled_fraction: Share of the training images that keep their labels (a seeded, stratified draw); the
            rest are used as unlabeled images. 1 keeps every label.
        labeled_seed: Seed of that draw (default: ``seed``).
        num_views: Replayable augmentation views per training image, for a teacher-output cache (see
            `ImageFolderClassification`); ``None``: fresh augmentation every time.

    Raises:
        ValueError: For invalid counts or sizes.

    Example::

        >>> dm = ShapesClassification("data/shapes", image_size=64)  # doctest: +SKIP
        >>> dm.prepare_data()  # generates data/shapes/classification once  # doctest: +SKIP
        >>> dm.setup("fit")  # doctest: +SKIP
    """

    shapes_task = "classification"

    def __init__(
        self,
        data_dir: str = "data/shapes",
        image_size: int = 64,
        batch_size: int = 64,
        num_workers: NumWorkers = "auto",
        in_channels: int = 3,
        augment: bool = True,
        generate: bool = True,
        num_train: int = 3000,
        num_val: int = 500,
        num_test: int = 500,
        difficulty: float = 1.0,
        seed: int = 0,
        verify_images: bool = True,
        in_chans: int | None = None,
        unlabeled_dir: str | None = None,
        labeled_fraction: float = 1.0,
        labeled_seed: int | None = None,
        num_views: int | None = None,
    ) -> None:
        # resolved here, before the base class saves this frame's arguments as hyperparameters
        in_channels = resolve_in_channels(in_channels, in_chans, owner=type(self).__name__)
        super().__init__(
            data_dir=data_dir,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            in_channels=in_channels,
            augment=augment,
            verify_images=verify_images,
            seed=seed,
            class_names=list(SHAPE_CLASSES),
            unlabeled_dir=unlabeled_dir,
            labeled_fraction=labeled_fraction,
            labeled_seed=labeled_seed,
            num_views=num_views,
        )
        self.init_generation(generate, num_train, num_val, num_test, difficulty)
