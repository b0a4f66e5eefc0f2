"""Several labels per image: a class and a segmentation mask of the synthetic shapes, for a multi-task student.

The shapes generator paints one image and annotates it for every task; its segmentation masks hold the class of
every pixel. `ShapesMultiTask` reads the segmentation data and derives the image's class from its mask: the shape
class that covers the most pixels (`dominant_class`). See docs/multitask.md.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from visiondistill.data.errors import DataError
from visiondistill.data.loading import NumWorkers
from visiondistill.data.segmentation import MaskFolderDataset, ShapesSegmentation
from visiondistill.data.shapes import SHAPE_CLASSES

__all__ = ["DominantClassDataset", "ShapesMultiTask", "dominant_class"]


def dominant_class(mask: Tensor, num_classes: int, ignore_index: int | None = None) -> int:
    """The foreground class (mask value >= 1) with the most pixels, as a class index without background (value - 1).

    Ties go to the lower class. The shapes generator's own classification label is the class of the largest single
    object; the two differ only when two smaller objects of one class together outnumber a larger one.

    Returns:
        The class index in ``0 .. num_classes - 2``, or ``-1`` when the mask has no foreground pixel.

    Example::

        >>> dominant_class(torch.tensor([[0, 2, 2], [1, 0, 0]]), num_classes=3)
        1
    """
    values = mask.flatten().long()
    if ignore_index is not None:
        values = values[values != ignore_index]
    counts = torch.bincount(values, minlength=num_classes)[1:num_classes]
    if counts.numel() == 0 or int(counts.max()) == 0:
        return -1
    return int(counts.argmax())


class DominantClassDataset(Dataset):
    """A mask dataset whose samples are dicts ``{"image", "mask", "label"}``, the label from the mask.

    The label is read from the mask *after* the transform (what the network sees); when an augmentation leaves no
    foreground pixel, from the untransformed mask.

    Raises:
        DataError: For an image whose mask has no foreground pixel at all (it has no class).
    """

    def __init__(self, masks: MaskFolderDataset) -> None:
        self.masks = masks

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.masks[index]
        num_classes, ignore = self.masks.num_classes, self.masks.ignore_index
        label = dominant_class(mask, num_classes, ignore)
        if label < 0:
            label = dominant_class(torch.from_numpy(self.masks.load_mask(index).astype("int64")), num_classes, ignore)
        if label < 0:
            image_path, mask_path = self.masks.samples[index]
            raise DataError(
                f"mask '{mask_path}' of '{image_path}' has no foreground pixel, so the image has no class; a "
                "multi-task sample needs at least one shape"
            )
        return {"image": image, "mask": mask, "label": label}


class ShapesMultiTask(ShapesSegmentation):
    """The synthetic shapes with two labels per image: its class and its segmentation mask.

    Reads the segmentation data of ``data_dir`` (generated on first use, as `ShapesSegmentation`); batches are dicts
    ``{"image": N×C×H×W, "mask": N×H×W, "label": N}``. The class of an image is the shape class that covers the most
    pixels of its mask (`dominant_class`). Each head has its classes: ``head_classes["cls"]`` the six shapes,
    ``head_classes["seg"]`` background and the six shapes (``class_names``, ``num_classes`` are the segmentation's,
    as in `ShapesSegmentation`).

    Args:
        data_dir: Root of the generated data set.
        image_size: Image size to generate and load.
        batch_size: Images per batch.
        num_workers: DataLoader worker processes, or ``auto``.
        in_channels: 3 generates RGB images, 1 grayscale.
        augment: Augment training images (image and mask together).
        generate: Generate the data when missing.
        num_train: Training images.
        num_val: Validation images.
        num_test: Test images (0: test on val).
        difficulty: Generator difficulty (0 clean, 1 benchmark).
        seed: Data-set seed (also seeds the shuffle order).
        verify: Check every pair in ``setup``.

    Example::

        >>> dm = ShapesMultiTask("data/shapes", image_size=64)  # doctest: +SKIP
        >>> batch = next(iter(dm.train_dataloader()))  # doctest: +SKIP
        >>> sorted(batch)  # doctest: +SKIP
        ['image', 'label', 'mask']
    """

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
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            in_channels=in_channels,
            augment=augment,
            generate=generate,
            num_train=num_train,
            num_val=num_val,
            num_test=num_test,
            difficulty=difficulty,
            seed=seed,
            verify=verify,
        )
        #: The classes of each head, by head name.
        self.head_classes: dict[str, list[str]] = {"cls": list(SHAPE_CLASSES), "seg": list(self.class_names)}

    def _dataset(self, split: str, train: bool) -> Dataset:
        return DominantClassDataset(super()._dataset(split, train))
