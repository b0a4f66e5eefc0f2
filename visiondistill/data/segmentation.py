"""Semantic segmentation data: image + mask folders, joint albumentations pipelines and the Lightning data modules.

The folder format (the one ``visiondistill synth`` writes for the shapes)::

    data_dir/<split>/images/<name>.<png|jpg|…>     the images
    data_dir/<split>/masks/<name>.png              one mask per image, same file stem: a single-channel PNG whose
                                                   pixel values are class indices (0 … num_classes − 1), or
                                                   ``ignore_index`` for pixels that count for neither loss nor metric

Every problem with a file is reported by name: an image without a mask, an image and a mask of different sizes, a
mask with values that are neither class indices nor ``ignore_index``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from visiondistill.core.errors import ConfigError
from visiondistill.data.channels import resolve_in_channels
from visiondistill.data.errors import DataError, MissingDataError
from visiondistill.data.generated import GeneratedShapes
from visiondistill.data.images import IMAGE_EXTENSIONS, check_image, check_window, read_image, read_mask
from visiondistill.data.loading import NumWorkers, check_num_workers
from visiondistill.data.shapes import SHAPE_CLASSES
from visiondistill.data.splits import SplitFolderDataModule
from visiondistill.data.transforms import augmentation_pipeline, resolve_normalization
from visiondistill.data.views import ReplayableViews, check_num_views

__all__ = [
    "MASK_EXTENSIONS",
    "MaskFolderDataset",
    "MaskFolderSegmentation",
    "ShapesSegmentation",
    "segmentation_transforms",
]

#: Lossless formats a mask may be stored in (a JPEG would blur the class indices).
MASK_EXTENSIONS: tuple[str, ...] = (".png", ".bmp", ".tif", ".tiff")


def segmentation_transforms(
    image_size: int,
    train: bool,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    replayable: bool = False,
) -> A.Compose:
    """Build the joint image + mask pipeline for segmentation.

    Geometric steps move image and mask together (the mask with nearest-neighbour interpolation, so class indices
    and ``ignore_index`` stay exact); photometric steps touch the image only. Training adds flips, 90-degree
    rotations, a small affine and brightness/contrast; evaluation only resizes.

    Args:
        image_size: Output height and width.
        train: Add augmentation.
        in_channels: 1 for ``H x W`` grayscale input, 3 for RGB.
        mean: Per-channel mean in [0, 1] units; ``None`` = ImageNet (averaged for grayscale).
        std: Per-channel std in [0, 1] units; ``None`` = ImageNet (averaged for grayscale).
        replayable: Return a plain ``Compose`` whose draws follow ``set_random_seed`` (replayable views,
            `visiondistill.data.views`) instead of one reseeded from torch on each call.

    Returns:
        A pipeline called as ``pipeline(image=array, mask=array)`` that returns a ``float32`` image tensor
        ``in_channels x S x S`` and the mask as an ``S x S`` tensor.

    Raises:
        ValueError: For a non-positive ``image_size`` or inconsistent normalisation arguments.

    Example::

        >>> out = segmentation_transforms(32, train=True, in_channels=1)(
        ...     image=np.zeros((40, 40), np.uint8), mask=np.full((40, 40), 255, np.uint8))
        >>> tuple(out["image"].shape), tuple(out["mask"].shape), int(out["mask"].max())
        ((1, 32, 32), (32, 32), 255)
    """
    return augmentation_pipeline(image_size, train, in_channels, mean, std, torch_seeded=not replayable)


class MaskFolderDataset(Dataset):
    """Images in ``root/images/`` with their class-index masks in ``root/masks/`` (matched by file stem).

    Args:
        root: Split folder holding ``images`` and ``masks``.
        num_classes: Number of classes; mask values must be below it (or equal ``ignore_index``).
        transform: Joint albumentations pipeline, ``transform(image=…, mask=…)``; ``None`` returns the image as a
            ``float32`` tensor in [0, 1].
        in_channels: 3 loads images as RGB, 1 as grayscale.
        ignore_index: Mask value of pixels to ignore; ``None`` allows none.
        extensions: File name endings that count as images.
        intensity_window: ``[low, high]`` in the image files' units, mapped to [0, 1] instead of the type's range
            (see `visiondistill.data.images`); masks are never rescaled.

    Raises:
        MissingDataError: When ``root/images`` or ``root/masks`` does not exist, or an image has no mask (the
            message names the image and the mask file it looked for).
        DataError: When there are no images.

    Example::

        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for sub in ("images", "masks"):
        ...     (root / sub).mkdir()
        >>> Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "a.jpg")
        >>> Image.fromarray(np.ones((8, 8), np.uint8)).save(root / "masks" / "a.png")
        >>> image, mask = MaskFolderDataset(root, num_classes=2)[0]
        >>> tuple(image.shape), mask.dtype, int(mask.sum())
        ((3, 8, 8), torch.int64, 64)
    """

    def __init__(
        self,
        root: str | Path,
        num_classes: int,
        transform: Callable[..., dict[str, Any]] | None = None,
        in_channels: int = 3,
        ignore_index: int | None = 255,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        intensity_window: Sequence[float] | None = None,
    ) -> None:
        if in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {in_channels!r}")
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes!r}")
        self.root = Path(root)
        self.num_classes = int(num_classes)
        self.transform = transform
        self.in_channels = in_channels
        self.ignore_index = ignore_index
        self.intensity_window = check_window(intensity_window)
        image_dir, mask_dir = self.root / "images", self.root / "masks"
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise MissingDataError(
                    f"Segmentation folder '{folder}' does not exist: a split needs 'images/' and 'masks/' "
                    "sub-folders (masks: single-channel PNGs of class indices, same file stem as the image).",
                    path=folder,
                )
        suffixes = tuple(e.lower() for e in extensions)
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in suffixes and not p.name.startswith("."))
        if not images:
            raise DataError(f"No images ({', '.join(suffixes)}) in '{image_dir}'.")
        masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.suffix.lower() in MASK_EXTENSIONS}
        missing = [image for image in images if image.stem not in masks]
        if missing:
            shown = ", ".join(f"'{image}' (expected '{mask_dir / (image.stem + '.png')}')" for image in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise MissingDataError(
                f"{len(missing)} image(s) have no mask file: {shown}{more}. Every image needs a mask of the same "
                f"file stem in '{mask_dir}'; add the masks or remove those images.",
                path=mask_dir / (missing[0].stem + ".png"),
            )
        self.samples: list[tuple[Path, Path]] = [(image, masks[image.stem]) for image in images]

    def __len__(self) -> int:
        """Number of image/mask pairs."""
        return len(self.samples)

    def load_image(self, index: int) -> np.ndarray:
        """Decode image ``index`` as ``float32`` in [0, 1], ``H x W x in_channels`` (`read_image`: any bit depth)."""
        return read_image(self.samples[index][0], channels=self.in_channels, window=self.intensity_window)

    def load_mask(self, index: int) -> np.ndarray:
        """Decode mask ``index`` as an ``H x W`` integer array of class indices (`read_mask`), checking its values.

        Raises:
            CorruptImageError: When the file cannot be decoded.
            DataError: When the mask has several channels, or values that are neither class indices nor
                ``ignore_index`` (the message lists the values found).
        """
        path = self.samples[index][1]
        mask = read_mask(path)
        self._check_values(mask, path)
        return mask

    def _check_values(self, mask: np.ndarray, path: Path) -> None:
        if mask.size == 0 or (mask.min() >= 0 and mask.max() < self.num_classes):
            return
        values = np.unique(mask)
        bad = [int(v) for v in values if not (0 <= v < self.num_classes) and v != self.ignore_index]
        if bad:
            shown = bad if len(bad) <= 12 else [*bad[:12], "…"]
            raise DataError(
                f"Mask '{path}' holds values {shown} (all values found: {[int(v) for v in values][:20]}), but with "
                f"num_classes={self.num_classes} the valid values are 0..{self.num_classes - 1}"
                + (f" and ignore_index={self.ignore_index}" if self.ignore_index is not None else "")
                + ". Set num_classes (or class_names) to cover every class, set ignore_index to the value of "
                "unlabelled pixels, or fix the mask."
            )

    def check_sizes(self, index: int, image_size: tuple[int, int], mask_size: tuple[int, int]) -> None:
        """Raise a `DataError` naming both files when the image and mask sizes (width, height) differ."""
        if tuple(image_size) != tuple(mask_size):
            image, mask = self.samples[index]
            raise DataError(
                f"Image '{image}' is {image_size[0]}x{image_size[1]} (width x height) but its mask '{mask}' is "
                f"{mask_size[0]}x{mask_size[1]}; a mask must have the same size as its image."
            )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(image C x H x W float32, mask H x W int64)``."""
        image, mask = self.load_image(index), self.load_mask(index)
        self.check_sizes(index, image.shape[1::-1], mask.shape[1::-1])
        mask = mask.astype(np.int64)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            return out["image"], torch.as_tensor(out["mask"]).long()
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(mask)

    def verify(self) -> None:
        """Check every pair: readable files, equal sizes (from the headers) and valid mask values.

        Raises:
            CorruptImageError: For an unreadable file.
            DataError: For the first pair whose sizes differ or whose mask holds invalid values.
        """
        for index, (image_path, _) in enumerate(self.samples):
            image_size = check_image(image_path)
            mask = self.load_mask(index)
            self.check_sizes(index, image_size, mask.shape[1::-1])


class MaskFolderSegmentation(SplitFolderDataModule):
    """Segmentation data module over ``data_dir/{train,val,test}/{images,masks}/`` (see the module docstring).

    Without a ``test`` folder the test and predict loaders use ``val``. Batches are ``(images, masks)``: images
    ``N×C×H×W`` float32, masks ``N×H×W`` int64 with ``ignore_index`` on unlabelled pixels.

    Args:
        data_dir: Folder holding the split folders.
        num_classes: Number of classes, background included; may be left out when ``class_names`` is given.
        class_names: Class names in index order (``class_names[0]`` is usually the background).
        image_size: Images and masks are resized to ``image_size x image_size``.
        batch_size: Images per batch.
        num_workers: DataLoader worker processes, or ``auto`` (`visiondistill.data.loading`: the machine's cores).
        in_channels: 3 loads RGB, 1 grayscale.
        ignore_index: Mask value of unlabelled pixels (255 by default); ``None`` allows none.
        augment: Augment training images (see `segmentation_transforms`).
        verify: In ``setup``, check every pair (sizes, mask values), so a bad file fails at once and by name.
        seed: Seed of the training shuffle order.
        in_chans: Deprecated spelling of ``in_channels`` (configs written before the rename).
        intensity_window: ``[low, high]`` in the image files' units (raw counts, or Hounsfield units of a CT
            DICOM), mapped to [0, 1] instead of each file's type range, e.g. ``[-160, 240]`` for a soft-tissue CT
            window (see `visiondistill.data.images`). Masks are never rescaled.
        unlabeled_dir: A folder of images without labels, read with the training transform; their batches are
            interleaved with the labeled ones for the distillation terms (docs/unlabeled.md).
        labeled_fraction: Share of the training images that keep their labels (a seeded, stratified draw); the
            rest are used as unlabeled images. 1 keeps every label.
        labeled_seed: Seed of that draw (default: ``seed``).
        num_views: Replayable augmentation views per training image (K, `visiondistill.data.views`; image and mask
            move together): each epoch shows every image in one of its K views, and training batches are
            ``(images, masks, view_ids)`` for a teacher-output cache (`visiondistill.distill.TeacherOutputCache`).
            ``None``: a fresh random augmentation every time.

    Raises:
        ValueError: For non-positive sizes, negative workers, ``in_channels`` other than 1 or 3, no class count,
            or a ``class_names`` list that disagrees with ``num_classes``.
        ConfigError: For an ``intensity_window`` that is not ``[low, high]`` with ``low < high``, or a bad
            ``num_views``.

    Example::

        >>> dm = MaskFolderSegmentation("data/my_scans", class_names=["background", "tumour"])  # doctest: +SKIP
        >>> dm.setup("fit")  # doctest: +SKIP
        >>> images, masks = next(iter(dm.train_dataloader()))  # doctest: +SKIP
    """

    def __init__(
        self,
        data_dir: str,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        image_size: int = 64,
        batch_size: int = 32,
        num_workers: NumWorkers = "auto",
        in_channels: int = 3,
        ignore_index: int | None = 255,
        augment: bool = True,
        verify: bool = True,
        seed: int = 0,
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
        if num_classes is None and class_names is None:
            raise ConfigError("give num_classes or class_names (background included), e.g. num_classes: 2")
        if num_classes is not None and class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        if ignore_index is not None and num_classes is not None and 0 <= ignore_index < num_classes:
            raise ConfigError(f"ignore_index {ignore_index} is a class index (num_classes={num_classes}); use e.g. 255")
        self.data_dir = Path(data_dir)
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.num_classes = len(self.class_names)
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.in_channels = in_channels
        self.ignore_index = ignore_index
        self.augment = augment
        self.verify = verify
        self.seed = seed
        self.intensity_window = check_window(intensity_window)
        self.init_unlabeled(unlabeled_dir, labeled_fraction, labeled_seed)
        self.mean, self.std = resolve_normalization(in_channels)
        self.train_dataset: MaskFolderDataset | None = None
        self.val_dataset: MaskFolderDataset | None = None
        self.test_dataset: MaskFolderDataset | None = None

    def missing_data_hint(self) -> str:
        """How to create missing data; appended to `MissingDataError` messages."""
        return "Check data_dir: it must hold train/{images,masks}/ and val/{images,masks}/ folders."

    def _dataset(self, split: str, train: bool) -> MaskFolderDataset | ReplayableViews:
        folder = self.split_dir(split)
        if not folder.is_dir():
            raise MissingDataError(f"Split folder '{folder}' does not exist. {self.missing_data_hint()}", path=folder)
        views = train and getattr(self, "num_views", None) is not None
        dataset = MaskFolderDataset(
            folder,
            num_classes=self.num_classes,
            transform=segmentation_transforms(
                self.image_size, train and self.augment, self.in_channels, replayable=views
            ),
            in_channels=self.in_channels,
            ignore_index=self.ignore_index,
            intensity_window=self.intensity_window,
        )
        if self.verify:
            dataset.verify()
        return ReplayableViews(dataset, None, self.num_views, seed=self.seed) if views else dataset


class ShapesSegmentation(GeneratedShapes, MaskFolderSegmentation):
    """Semantic segmentation of the synthetic shapes, generated into ``data_dir`` on first use.

    Reads ``data_dir/segmentation/{train,val,test}/{images,masks}/``; the classes are ``background`` and the six
    shapes (mask value ``i + 1`` for ``SHAPE_CLASSES[i]``). The generation parameters are checked against
    ``data_dir/meta.json`` (shared with the other tasks of the same ``data_dir``), so data generated with other
    settings is never used silently.

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
        verify: Check every pair in ``setup``.
        in_chans: Deprecated spelling of ``in_channels`` (configs written before the rename).
        unlabeled_dir: A folder of images without labels, read with the training transform; their batches are
            interleaved with the labeled ones for the distillation terms (docs/unlabeled.md).
        labeled_fraction: Share of the training images that keep their labels (a seeded, stratified draw); the
            rest are used as unlabeled images. 1 keeps every label.
        labeled_seed: Seed of that draw (default: ``seed``).
        num_views: Replayable augmentation views per training image, for a teacher-output cache (see
            `MaskFolderSegmentation`); ``None``: fresh augmentation every time.

    Raises:
        ValueError: For invalid counts or sizes.

    Example::

        >>> dm = ShapesSegmentation("data/shapes_segmentation", image_size=64)  # doctest: +SKIP
        >>> dm.prepare_data()  # generates data/shapes_segmentation/segmentation once  # doctest: +SKIP
    """

    shapes_task = "segmentation"

    def __init__(
        self,
        data_dir: str = "data/shapes",
        image_size: int = 64,
        batch_size: int = 32,
        num_workers: NumWorkers = "auto",
        in_channels: int = 3,
        augment: bool = True,
        generate: bool = True,
        num_train: int = 3000,
        num_val: int = 500,
        num_test: int = 500,
        difficulty: float = 1.0,
        seed: int = 0,
        verify: bool = True,
        in_chans: int | None = None,
        unlabeled_dir: str | None = None,
        labeled_fraction: float = 1.0,
        labeled_seed: int | None = None,
        num_views: int | None = None,
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            class_names=["background", *SHAPE_CLASSES],
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            in_channels=in_channels,
            ignore_index=None,
            augment=augment,
            verify=verify,
            seed=seed,
            in_chans=in_chans,
            unlabeled_dir=unlabeled_dir,
            labeled_fraction=labeled_fraction,
            labeled_seed=labeled_seed,
            num_views=num_views,
        )
        self.init_generation(generate, num_train, num_val, num_test, difficulty)
