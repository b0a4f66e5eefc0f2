"""The keypoint data modules: `COCOKeypoints` over COCO keypoint files, and `ShapesKeypoints` on the synthetic shapes.

The synthetic shapes (`ShapesKeypoints`) have four keypoints per object, its *extreme tips*: ``top``, ``right``,
``bottom`` and ``left`` — of the shape's corners or tips (the generator's keypoint slots), the one with the smallest
``y``, the largest ``x``, the largest ``y`` and the smallest ``x``. The generator's slot order follows each shape's
random rotation, which no image shows (a square turned by 90° looks the same), so slot ``i`` is not a learnable
keypoint; the extreme tips are defined by the image alone, are the same kind of point for every shape class, and have
a natural left/right pair for flipping.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from pytorch_lightning.utilities import rank_zero_info

from visiondistill.core.errors import ConfigError
from visiondistill.data.channels import resolve_in_channels
from visiondistill.data.errors import DataError, MissingDataError
from visiondistill.data.generated import GeneratedShapes
from visiondistill.data.images import check_window
from visiondistill.data.keypoints.coco import KeypointConverter, read_coco_keypoints
from visiondistill.data.keypoints.dataset import KeypointCrops
from visiondistill.data.keypoints.geometry import check_flip_pairs
from visiondistill.data.loading import NumWorkers, check_num_workers
from visiondistill.data.shapes import SHAPE_CLASSES
from visiondistill.data.splits import SplitFolderDataModule
from visiondistill.data.transforms import resolve_normalization

__all__ = ["SHAPE_FLIP_PAIRS", "SHAPE_KEYPOINT_NAMES", "SHAPE_TIPS", "COCOKeypoints", "ShapesKeypoints", "extreme_tips"]

#: The keypoints of `ShapesKeypoints`, and their left/right pair.
SHAPE_KEYPOINT_NAMES: tuple[str, ...] = ("top", "right", "bottom", "left")
SHAPE_FLIP_PAIRS: tuple[tuple[int, int], ...] = ((1, 3),)
#: Corners or tips per shape class: the generator's first ``n`` keypoint slots (see `ShapesGenerator`). A circle's
#: four slots are points of its invisible rotation, not features of the image, so circles have none.
SHAPE_TIPS: dict[str, int] = {"square": 4, "triangle": 3, "star": 5, "hexagon": 6, "cross": 8}


def extreme_tips(keypoints: np.ndarray, num_tips: int) -> np.ndarray | None:
    """The ``top, right, bottom, left`` extreme tips of a shape from its generator keypoint slots.

    Args:
        keypoints: ``S×3`` ``(x, y, v)`` slots; the first ``num_tips`` are the shape's corners or tips.
        num_tips: Corners or tips of the shape's class (`SHAPE_TIPS`).

    Returns:
        ``4×3`` keypoints (each tip keeps its visibility), or ``None`` when a tip lies outside the image
        (``v = 0``): the true extreme might be that tip, so the instance cannot be labelled.

    Example::

        >>> square = np.array([[10, 2, 2], [18, 10, 2], [10, 18, 1], [2, 10, 2]], np.float32)
        >>> extreme_tips(square, 4)[:, 0].tolist()
        [10.0, 18.0, 10.0, 2.0]
    """
    tips = np.asarray(keypoints, dtype=np.float32)[:num_tips]
    if len(tips) < num_tips or (tips[:, 2] <= 0).any():
        return None
    order = [tips[:, 1].argmin(), tips[:, 0].argmax(), tips[:, 1].argmax(), tips[:, 0].argmin()]
    return tips[order].copy()


class COCOKeypoints(SplitFolderDataModule):
    """Top-down keypoint data module over COCO keypoint files: instance crops with target heatmaps.

    Reads ``data_dir/<annotation_file>`` and the images under ``data_dir/<image_folder>`` for each split
    (``{split}`` is replaced by ``train``, ``val`` and ``test``); without test annotations the test and predict
    loaders use ``val``. For COCO 2017: ``annotation_file: annotations/person_keypoints_{split}2017.json`` and
    ``image_folder: {split}2017``. Batches are dicts (see `KeypointCrops`).

    Args:
        data_dir: Root of the data set.
        annotation_file: Annotation file pattern, relative to ``data_dir``.
        image_folder: Image folder pattern, relative to ``data_dir``.
        num_keypoints: ``K``; ``None`` reads it from the categories.
        keypoint_names: Names of the keypoints (default: the category's).
        flip_pairs: Left/right keypoint pairs, e.g. COCO persons ``[[1, 2], [3, 4], …]``.
        category_ids: Categories to use; ``None`` for all.
        input_size: Crop side in pixels.
        heatmap_stride: Input pixels per heatmap pixel; must equal the model's stride.
        sigma: Target Gaussian standard deviation, in heatmap pixels.
        padding: Crop side over the box's longer side.
        rotation: Largest training rotation, in degrees.
        batch_size: Instances per batch.
        num_workers: DataLoader worker processes, or ``auto`` (`visiondistill.data.loading`).
        in_channels: 3 for RGB, 1 for grayscale.
        augment: Augment the training crops.
        seed: Seed of the training shuffle order.
        in_chans: Deprecated spelling of ``in_channels`` (configs written before the rename).
        intensity_window: ``[low, high]`` in the image files' units, mapped to [0, 1] instead of each file's type
            range (see `visiondistill.data.images`).

    Raises:
        ValueError: For bad sizes or flip pairs that name keypoints that do not exist.

    Example::

        >>> dm = COCOKeypoints("data/coco", annotation_file="annotations/person_keypoints_{split}2017.json",
        ...                    image_folder="{split}2017", flip_pairs=[[1, 2], [3, 4]])  # doctest: +SKIP
    """

    def __init__(
        self,
        data_dir: str,
        annotation_file: str = "annotations/person_keypoints_{split}.json",
        image_folder: str = "{split}",
        num_keypoints: int | None = None,
        keypoint_names: list[str] | None = None,
        flip_pairs: list[list[int]] | None = None,
        category_ids: list[int] | None = None,
        input_size: int = 64,
        heatmap_stride: int = 4,
        sigma: float = 1.0,
        padding: float = 1.25,
        rotation: float = 30.0,
        batch_size: int = 32,
        num_workers: NumWorkers = "auto",
        in_channels: int = 3,
        augment: bool = True,
        seed: int = 0,
        in_chans: int | None = None,
        intensity_window: list[float] | None = None,
    ) -> None:
        super().__init__()
        num_workers = check_num_workers(num_workers, owner=type(self).__name__)
        if input_size <= 0 or batch_size <= 0 or heatmap_stride <= 0:
            raise ConfigError(
                f"need input_size > 0, heatmap_stride > 0 and batch_size > 0, got "
                f"input_size={input_size!r}, heatmap_stride={heatmap_stride!r}, batch_size={batch_size!r}"
            )
        if input_size % heatmap_stride:
            raise ConfigError(f"input_size {input_size} is not a multiple of heatmap_stride {heatmap_stride}")
        in_channels = resolve_in_channels(in_channels, in_chans, owner=type(self).__name__)
        if keypoint_names is not None and num_keypoints is not None and len(keypoint_names) != num_keypoints:
            raise ConfigError(f"keypoint_names has {len(keypoint_names)} names but num_keypoints is {num_keypoints}")
        count = num_keypoints if num_keypoints is not None else len(keypoint_names) if keypoint_names else None
        if count is not None:
            check_flip_pairs(flip_pairs, count, keypoint_names)
        self.data_dir = Path(data_dir)
        self.annotation_file, self.image_folder = annotation_file, image_folder
        self._num_keypoints = count
        self._keypoint_names = list(keypoint_names) if keypoint_names is not None else None
        self.flip_pairs = [list(p) for p in flip_pairs or ()]
        self.category_ids = list(category_ids) if category_ids is not None else None
        self.input_size, self.heatmap_stride, self.sigma, self.padding = input_size, heatmap_stride, sigma, padding
        self.rotation = rotation
        self.batch_size, self.num_workers, self.in_channels = batch_size, num_workers, in_channels
        self.augment, self.seed = augment, seed
        self.intensity_window = check_window(intensity_window)
        self.mean, self.std = resolve_normalization(in_channels)  # read by the explanation callbacks for display
        self.train_dataset: KeypointCrops | None = None
        self.val_dataset: KeypointCrops | None = None
        self.test_dataset: KeypointCrops | None = None

    # -- what the task reads ---------------------------------------------------------------------

    @property
    def num_keypoints(self) -> int | None:
        """``K`` (from the arguments, else from the first dataset read)."""
        if self._num_keypoints is None:
            dataset = self.train_dataset or self.val_dataset or self.test_dataset
            return dataset.num_keypoints if dataset is not None else None
        return self._num_keypoints

    @property
    def keypoint_names(self) -> list[str] | None:
        """Names of the keypoints."""
        if self._keypoint_names is None:
            dataset = self.train_dataset or self.val_dataset or self.test_dataset
            return list(dataset.keypoint_names) if dataset is not None else None
        return self._keypoint_names

    # -- files -----------------------------------------------------------------------------------

    def annotation_path(self, split: str) -> Path:
        """The annotation file of one split."""
        return self.image_root / self.annotation_file.format(split=split)

    def split_dir(self, split: str) -> Path:
        """The image folder of one split."""
        return self.image_root / self.image_folder.format(split=split)

    @property
    def test_split(self) -> str:
        """``"test"`` when its annotations exist, else ``"val"``."""
        return "test" if self.annotation_path("test").is_file() else "val"

    def missing_data_hint(self) -> str:
        """How to create missing data."""
        return (
            f"Check data_dir: it must hold '{self.annotation_file}' and '{self.image_folder}' for the train and val "
            "splits ({split} = train, val, test)."
        )

    #: Why `read_coco_keypoints` skips an annotation, for the count it logs.
    skip_reasons: ClassVar[str] = "crowd, no labelled keypoint or a box under one pixel"

    def convert(self) -> tuple[KeypointConverter | None, int | None]:
        """A keypoint converter applied to every annotation, and the keypoint count after it (none here)."""
        return None, None

    def _dataset(self, split: str, train: bool) -> KeypointCrops:
        annotations = self.annotation_path(split)
        if not annotations.is_file():
            raise MissingDataError(
                f"Annotation file '{annotations}' does not exist. {self.missing_data_hint()}", path=annotations
            )
        converter, converted = self.convert()
        read = read_coco_keypoints(
            annotations,
            num_keypoints=None if converter is not None else self._num_keypoints,
            category_ids=self.category_ids,
            converter=converter,
            converted_keypoints=converted,
        )
        if self._keypoint_names is not None:
            read.keypoint_names = list(self._keypoint_names)
        if not read.instances:
            raise DataError(f"'{annotations}' holds no usable keypoint instance ({read.skipped} skipped)")
        if read.outside_image or read.skipped:
            rank_zero_info(
                f"{annotations.name}: {len(read.instances)} instances; {read.outside_image} labelled keypoints lay "
                f"outside their image and were marked invisible; {read.skipped} annotations skipped "
                f"({self.skip_reasons})"
            )
        return KeypointCrops(
            read,
            self.split_dir(split),
            input_size=self.input_size,
            heatmap_stride=self.heatmap_stride,
            sigma=self.sigma,
            padding=self.padding,
            train=train and self.augment,
            flip_pairs=self.flip_pairs,
            rotation=self.rotation,
            in_channels=self.in_channels,
            intensity_window=self.intensity_window,
        )


class ShapesKeypoints(GeneratedShapes, COCOKeypoints):
    """The four extreme tips (top, right, bottom, left) of the synthetic shapes, generated on first use.

    Reads the COCO files ``visiondistill synth`` writes under ``data_dir/coco`` and turns each object's keypoint
    slots into its extreme tips (`extreme_tips`; see the module docstring for why). Objects of the classes in
    ``categories`` are used; one with a tip outside the image is skipped (its extremes are unknown). The flip pair is
    ``right``/``left``; the training crops are not rotated, since a rotation changes which tip is extreme.

    Args:
        data_dir: Root of the generated data set.
        categories: Shape classes whose objects are used (any of `SHAPE_TIPS`).
        input_size: Crop side in pixels.
        heatmap_stride: Input pixels per heatmap pixel.
        sigma: Target Gaussian standard deviation, in heatmap pixels.
        padding: Crop side over the box's longer side.
        batch_size: Instances per batch.
        num_workers: DataLoader worker processes, or ``auto`` (`visiondistill.data.loading`).
        image_size: Size of the generated images.
        in_channels: 3 generates RGB images, 1 grayscale.
        augment: Augment the training crops.
        generate: Generate the data when missing.
        num_train: Training images (each holds one to three objects).
        num_val: Validation images.
        num_test: Test images (0: test on val).
        difficulty: Generator difficulty.
        seed: Data-set seed (also seeds the shuffle order).
        in_chans: Deprecated spelling of ``in_channels`` (configs written before the rename).

    Raises:
        ValueError: For a class without tips (``circle``) or an unknown one, or bad sizes and counts.

    Example::

        >>> dm = ShapesKeypoints("data/shapes_keypoints", num_train=600)  # doctest: +SKIP
        >>> dm.prepare_data(); dm.setup("fit")  # doctest: +SKIP
    """

    shapes_task: ClassVar[str] = "keypoints"
    skip_reasons: ClassVar[str] = "an object with a tip outside the image, whose extremes are unknown"

    def __init__(
        self,
        data_dir: str = "data/shapes_keypoints",
        categories: list[str] | None = None,
        input_size: int = 64,
        heatmap_stride: int = 4,
        sigma: float = 1.0,
        padding: float = 1.25,
        batch_size: int = 32,
        num_workers: NumWorkers = "auto",
        image_size: int = 64,
        in_channels: int = 3,
        augment: bool = True,
        generate: bool = True,
        num_train: int = 3000,
        num_val: int = 500,
        num_test: int = 500,
        difficulty: float = 1.0,
        seed: int = 0,
        in_chans: int | None = None,
    ) -> None:
        categories = list(categories) if categories is not None else list(SHAPE_TIPS)
        bad = [c for c in categories if c not in SHAPE_TIPS]
        if not categories or bad:
            raise ConfigError(
                f"categories must be shape classes with tips, any of {list(SHAPE_TIPS)}; got {bad or categories}"
                + (" (a circle has no corners or tips)" if "circle" in bad else "")
            )
        super().__init__(
            data_dir=data_dir,
            annotation_file="annotations/instances_{split}.json",
            image_folder="images/{split}",
            num_keypoints=len(SHAPE_KEYPOINT_NAMES),
            keypoint_names=list(SHAPE_KEYPOINT_NAMES),
            flip_pairs=[list(p) for p in SHAPE_FLIP_PAIRS],
            category_ids=[SHAPE_CLASSES.index(c) + 1 for c in categories],
            input_size=input_size,
            heatmap_stride=heatmap_stride,
            sigma=sigma,
            padding=padding,
            rotation=0.0,
            batch_size=batch_size,
            num_workers=num_workers,
            in_channels=in_channels,
            augment=augment,
            seed=seed,
            in_chans=in_chans,
        )
        self.categories = categories
        self.image_size = image_size
        self.init_generation(generate, num_train, num_val, num_test, difficulty)

    @property
    def image_root(self) -> Path:
        """``data_dir/coco``: the keypoints share the COCO files with detection."""
        return self.data_dir / "coco"

    def convert(self) -> tuple[KeypointConverter, int]:
        """Turns the generator's keypoint slots into the extreme tips (`extreme_tips`)."""

        def to_extreme_tips(keypoints: np.ndarray, category: str) -> np.ndarray | None:
            return extreme_tips(keypoints, SHAPE_TIPS[category]) if category in SHAPE_TIPS else None

        return to_extreme_tips, len(SHAPE_KEYPOINT_NAMES)
