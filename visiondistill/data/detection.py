"""Object-detection data: COCO-format JSON + image folders, bbox-aware albumentations pipelines, Lightning modules.

The folder layout (the one ``visiondistill synth`` writes for the shapes, under ``<data_dir>/coco``)::

    data_dir/images/<split>/<file_name>                 the images named by the JSON's ``images[].file_name``
    data_dir/annotations/instances_<split>.json         COCO "instances" JSON: images, annotations, categories

Both paths are patterns (``images_pattern``, ``annotations_pattern``), so COCO 2017 itself reads with
``images_pattern: "{split}2017"`` and ``annotations_pattern: "annotations/instances_{split}2017.json"``.

What is checked, and how problems are handled (each case counted in `CocoDetectionDataset.stats`):

- a file that is not valid JSON, or lacks ``images``/``annotations``/``categories``: `DataError` naming the file
  (and the line and column of a JSON syntax error);
- an annotation whose ``category_id`` is not in ``categories``: `DataError` naming the annotation, its image and the
  valid ids;
- a box that reaches outside its image: clipped to the image (``clipped``), or a `DataError` with
  ``invalid_boxes="error"``;
- a box with zero or negative width or height (after clipping, so also a box entirely outside the image): dropped
  (``dropped``), or a `DataError` with ``invalid_boxes="error"``;
- ``iscrowd: 1`` annotations: left out (``crowd``), as COCO detectors usually do;
- images without annotations: allowed — they teach the detector what background looks like (``empty_images``).

Augmentation moves boxes with the image (albumentations ``BboxParams`` in ``pascal_voc`` format, clipped to the
image); a box that leaves the image is dropped when less than ``min_visibility`` of its area is still inside.
Categories are mapped, in ascending id order, to contiguous labels ``0 … K − 1`` (FCOS has no background class).
Batches are ``(images N×C×H×W, targets)`` with one dict per image: ``boxes`` (``M×4`` float32 xyxy pixels of the
resized image), ``labels`` (``M`` int64) and ``image_id``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from visiondistill.core.errors import ConfigError
from visiondistill.data.channels import resolve_in_channels
from visiondistill.data.errors import DataError, MissingDataError, check_image_files
from visiondistill.data.generated import GeneratedShapes
from visiondistill.data.images import check_window, read_image
from visiondistill.data.loading import NumWorkers, check_num_workers
from visiondistill.data.shapes import SHAPE_CLASSES
from visiondistill.data.splits import SplitFolderDataModule
from visiondistill.data.transforms import resolve_normalization
from visiondistill.data.views import ReplayableViews, check_num_views

__all__ = [
    "CocoDetection",
    "CocoDetectionDataset",
    "ShapesDetection",
    "detection_collate",
    "detection_transforms",
    "read_coco_json",
    "seed_augmentation_worker",
]

InvalidBoxes = Literal["clip", "error"]


def read_coco_json(path: str | Path) -> dict[str, Any]:
    """Reads a COCO JSON file and checks its top-level structure.

    Raises:
        MissingDataError: When the file does not exist.
        DataError: When it is not valid JSON (naming the file, line and column) or lacks ``images``,
            ``annotations`` or ``categories`` lists.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"COCO annotation file '{path}' does not exist.", path=path)
    try:
        with path.open(encoding="utf-8") as handle:
            content = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(
            f"COCO annotation file '{path}' is not valid JSON: {error.msg} at line {error.lineno}, column "
            f"{error.colno}. Fix the file (e.g. check it with `python -m json.tool '{path}'`)."
        ) from None
    except UnicodeDecodeError as error:
        raise DataError(f"COCO annotation file '{path}' is not UTF-8 text: {error}") from None
    if not isinstance(content, dict):
        raise DataError(f"COCO annotation file '{path}' holds a JSON {type(content).__name__}, not an object")
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(content.get(key), list)]
    if missing:
        raise DataError(
            f"COCO annotation file '{path}' has no {', '.join(repr(k) for k in missing)} list(s); a COCO "
            "instances file needs 'images', 'annotations' and 'categories'."
        )
    return content


def detection_transforms(
    image_size: int,
    train: bool,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    min_visibility: float = 0.3,
    seed: int | None = None,
) -> A.Compose:
    """The bbox-aware pipeline: resize (and, for training, flips, 90° rotations, shift/scale, brightness/contrast).

    Boxes travel as ``pascal_voc`` (xyxy pixels) with their ``labels``; albumentations clips them to the image and
    drops those with less than ``min_visibility`` of their area left inside (or under 1 px²). No free rotation: it
    would inflate the boxes.

    Args:
        image_size: Output height and width.
        train: Add augmentation.
        in_channels: 1 (grayscale) or 3 (RGB).
        mean: Per-channel mean in [0, 1] units; ``None`` = ImageNet.
        std: Per-channel std in [0, 1] units; ``None`` = ImageNet.
        min_visibility: Fraction of a box's area that must stay in the image for the box to be kept.
        seed: Seed of the augmentation's random draws (albumentations draws from OS entropy without one); the
            datamodules reseed it in each DataLoader worker (`seed_augmentation_worker`).

    Returns:
        A pipeline called as ``pipeline(image=array, bboxes=M×4, labels=M)``.

    Example::

        >>> out = detection_transforms(32, train=False)(
        ...     image=np.zeros((64, 64, 3), np.uint8), bboxes=np.array([[8.0, 8.0, 24.0, 40.0]]), labels=[1])
        >>> tuple(out["image"].shape), [list(map(float, b)) for b in out["bboxes"]]
        ((3, 32, 32), [[4.0, 4.0, 12.0, 20.0]])
    """
    if int(image_size) <= 0:
        raise ConfigError(f"image_size must be positive, got {image_size!r}")
    if not 0.0 <= min_visibility <= 1.0:
        raise ConfigError(f"min_visibility must be in [0, 1], got {min_visibility!r}")
    mean, std = resolve_normalization(in_channels, mean, std)
    steps: list[A.BasicTransform] = [A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA)]
    if train:
        steps += [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.Affine(scale=(0.85, 1.15), translate_percent=(-0.1, 0.1), border_mode=cv2.BORDER_REFLECT_101, p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        ]
    # ToFloat: 8-bit arrays ÷ 255, float arrays (what `read_image` gives, any bit depth) as they are
    steps += [A.ToFloat(), A.Normalize(mean=mean, std=std, max_pixel_value=1.0), ToTensorV2()]
    bbox_params = A.BboxParams(
        format="pascal_voc", label_fields=["labels"], min_visibility=min_visibility, min_area=1.0, clip=True
    )
    return A.Compose(steps, bbox_params=bbox_params, seed=seed)


def seed_augmentation_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: reseeds the dataset's albumentations pipeline from the worker's torch seed.

    Each worker's torch seed is ``base_seed + worker_id``, with ``base_seed`` drawn from the main process's torch
    generator, so a seeded run augments the same way every time and the workers do not repeat each other.
    """
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if isinstance(transform, A.Compose):
        transform.set_random_seed(info.seed % 2**32)


def detection_collate(samples: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """Stacks the images and keeps the targets as a list (their box counts differ).

    Samples of replayable views, ``(image, target, view_id)``, give ``(images, targets, view_ids [N, 2])``.
    """
    images = torch.stack([sample[0] for sample in samples])
    targets = [sample[1] for sample in samples]
    if all(len(sample) > 2 for sample in samples):
        return images, targets, torch.stack([sample[2] for sample in samples])
    return images, targets


class CocoDetectionDataset(Dataset):
    """One split of a COCO-format detection data set (see the module docstring for the checks).

    Args:
        annotation_file: The COCO instances JSON.
        image_dir: Folder the JSON's ``file_name`` values are relative to.
        transform: A `detection_transforms` pipeline; ``None`` returns the image in [0, 1] at its own size.
        in_channels: 3 loads RGB, 1 grayscale.
        invalid_boxes: ``"clip"`` clips boxes to their image and drops empty ones (counted in `stats`);
            ``"error"`` raises on the first such box.
        class_names: Expected category names in label order; the file must have the same (a `DataError` otherwise).
        intensity_window: ``[low, high]`` in the image files' units, mapped to [0, 1] instead of the type's range
            (see `visiondistill.data.images`).

    Raises:
        MissingDataError: When the JSON or the image folder does not exist.
        DataError: For the problems listed in the module docstring.

    Attributes:
        class_names: Category names in label order.
        category_ids: The COCO id of each label.
        stats: Counts: ``images``, ``annotations`` (kept), ``empty_images``, ``clipped``, ``dropped``, ``crowd``.
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_dir: str | Path,
        transform: A.Compose | None = None,
        in_channels: int = 3,
        invalid_boxes: InvalidBoxes = "clip",
        class_names: Sequence[str] | None = None,
        intensity_window: Sequence[float] | None = None,
    ) -> None:
        if invalid_boxes not in ("clip", "error"):
            raise ConfigError(f"invalid_boxes must be 'clip' or 'error', got {invalid_boxes!r}")
        if in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {in_channels!r}")
        self.annotation_file, self.image_dir = Path(annotation_file), Path(image_dir)
        self.transform, self.in_channels, self.invalid_boxes = transform, in_channels, invalid_boxes
        self.intensity_window = check_window(intensity_window)
        content = read_coco_json(self.annotation_file)
        if not self.image_dir.is_dir():
            raise MissingDataError(f"Image folder '{self.image_dir}' does not exist.", path=self.image_dir)
        categories = sorted(content["categories"], key=lambda c: c.get("id", 0) if isinstance(c, dict) else 0)
        if not categories or not all(isinstance(c, dict) and isinstance(c.get("id"), int) for c in categories):
            raise DataError(
                f"'{self.annotation_file}': 'categories' must be a non-empty list of objects with integer 'id' and "
                "'name'"
            )
        self.category_ids = [c["id"] for c in categories]
        self.class_names = [str(c.get("name", c["id"])) for c in categories]
        if class_names is not None and list(class_names) != self.class_names:
            raise DataError(
                f"'{self.annotation_file}' has the categories {self.class_names} (in id order) but "
                f"{list(class_names)} were expected; every split must share the same categories"
            )
        label_of = {cid: i for i, cid in enumerate(self.category_ids)}
        self.images: list[dict[str, Any]] = []
        index_of: dict[Any, int] = {}
        for entry in content["images"]:
            if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
                raise DataError(f"'{self.annotation_file}': image entry {entry!r} needs 'id' and 'file_name'")
            index_of[entry["id"]] = len(self.images)
            self.images.append(entry)
        check_image_files(self.image_dir, (entry["file_name"] for entry in self.images), self.annotation_file)
        boxes: list[list[list[float]]] = [[] for _ in self.images]
        labels: list[list[int]] = [[] for _ in self.images]
        self.stats = {"images": len(self.images), "annotations": 0, "empty_images": 0}
        self.stats.update(clipped=0, dropped=0, crowd=0)
        for annotation in content["annotations"]:
            where = f"'{self.annotation_file}': annotation {annotation.get('id', '?')!r}"
            image_index = index_of.get(annotation.get("image_id"))
            if image_index is None:
                raise DataError(f"{where} refers to image id {annotation.get('image_id')!r}, which is not in 'images'")
            image = self.images[image_index]
            where += f" (image '{image['file_name']}')"
            category = annotation.get("category_id")
            if category not in label_of:
                raise DataError(
                    f"{where} has category_id {category!r}, which is not in the category list (valid ids: "
                    f"{self.category_ids}); add the category to 'categories' or fix the annotation"
                )
            if annotation.get("iscrowd", 0):
                self.stats["crowd"] += 1
                continue
            box = self._checked_box(annotation.get("bbox"), image, where)
            if box is None:
                continue
            boxes[image_index].append(box)
            labels[image_index].append(label_of[category])
            self.stats["annotations"] += 1
        self.boxes = [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in boxes]
        self.labels = [np.asarray(lab, dtype=np.int64) for lab in labels]
        self.stats["empty_images"] = sum(1 for lab in self.labels if len(lab) == 0)

    def _checked_box(self, bbox: object, image: Mapping[str, Any], where: str) -> list[float] | None:
        """The annotation's box as xyxy, clipped to the image, or ``None`` when it is dropped."""
        if not isinstance(bbox, list | tuple) or len(bbox) != 4 or not all(isinstance(v, int | float) for v in bbox):
            raise DataError(f"{where} has bbox {bbox!r}; COCO boxes are [x, y, width, height] numbers")
        x, y, w, h = (float(v) for v in bbox)
        x0, y0, x1, y1 = x, y, x + w, y + h
        width, height = image.get("width"), image.get("height")
        if isinstance(width, int | float) and isinstance(height, int | float):
            clipped = (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1))
            if clipped != (x0, y0, x1, y1) and w > 0 and h > 0:
                if self.invalid_boxes == "error":
                    raise DataError(
                        f"{where} has bbox {list(bbox)} reaching outside its {width}x{height} image; fix it, or set "
                        "invalid_boxes: clip to clip such boxes to the image"
                    )
                x0, y0, x1, y1 = clipped
                if x1 > x0 and y1 > y0:
                    self.stats["clipped"] += 1
        if not (x1 > x0 and y1 > y0):
            if self.invalid_boxes == "error":
                raise DataError(
                    f"{where} has bbox {list(bbox)} with zero area inside its image; remove it, or set "
                    "invalid_boxes: clip to drop such boxes"
                )
            self.stats["dropped"] += 1
            return None
        return [x0, y0, x1, y1]

    def __len__(self) -> int:
        """Number of images (with or without annotations)."""
        return len(self.images)

    def load_image(self, index: int) -> np.ndarray:
        """Decode image ``index`` as ``float32`` in [0, 1], ``H×W×in_channels`` (`read_image`), checking its size."""
        entry = self.images[index]
        path = self.image_dir / entry["file_name"]
        if not path.is_file():
            raise MissingDataError(
                f"Image '{path}' (id {entry['id']!r} in '{self.annotation_file}') does not exist.", path=path
            )
        array = read_image(path, channels=self.in_channels, window=self.intensity_window)
        expected = (entry.get("height"), entry.get("width"))
        if None not in expected and tuple(array.shape[:2]) != tuple(expected):
            raise DataError(
                f"Image '{path}' is {array.shape[1]}x{array.shape[0]} but '{self.annotation_file}' says "
                f"{expected[1]}x{expected[0]} (width x height); fix the JSON's width/height"
            )
        return array

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        """``(image C×H×W float32, {"boxes": M×4 float32 xyxy, "labels": M int64, "image_id": int64})``."""
        image = self.load_image(index)
        boxes, labels = self.boxes[index], self.labels[index]
        if self.transform is not None:
            out = self.transform(image=image, bboxes=boxes, labels=labels)
            tensor = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        else:
            tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        image_id = self.images[index]["id"]
        target = {
            "boxes": torch.from_numpy(boxes.copy()),
            "labels": torch.from_numpy(labels.copy()),
            "image_id": torch.tensor(image_id if isinstance(image_id, int) else index),
        }
        return tensor, target


class CocoDetection(SplitFolderDataModule):
    """Detection data module over COCO-format JSON + image folders (see the module docstring).

    Without a test split the test and predict loaders use ``val``. Batches are ``(images, targets)`` (see
    `detection_collate`). The counts of each split's checks (clipped/dropped boxes, images without annotations) are
    reported when the datasets are built and kept in ``stats[split]``.

    Args:
        data_dir: Root folder.
        images_pattern: Image folder of a split, relative to ``data_dir`` (``{split}`` is replaced).
        annotations_pattern: Annotation file of a split, relative to ``data_dir``.
        image_size: Images are resized to ``image_size × image_size`` (boxes with them).
        batch_size: Images per batch.
        num_workers: DataLoader worker processes, or ``auto`` (`visiondistill.data.loading`).
        in_channels: 3 loads RGB, 1 grayscale.
        augment: Augment training images (see `detection_transforms`).
        invalid_boxes: ``"clip"`` (count and clip/drop) or ``"error"``.
        min_visibility: Augmentation keeps a box when at least this fraction of it stays in the image.
        seed: Seed of the training shuffle order.
        in_chans: Deprecated spelling of ``in_channels`` (configs written before the rename).
        intensity_window: ``[low, high]`` in the image files' units, mapped to [0, 1] instead of each file's type
            range (see `visiondistill.data.images`).
        num_views: Replayable augmentation views per training image (K, `visiondistill.data.views`; boxes move
            with the image): training batches are ``(images, targets, view_ids)`` for a teacher-output cache.
            ``None``: a fresh random augmentation every time.

    Raises:
        ValueError: For non-positive sizes, negative workers or a bad ``invalid_boxes``.

    Example::

        >>> dm = CocoDetection("data/my_coco", images_pattern="{split}2017",
        ...                    annotations_pattern="annotations/instances_{split}2017.json")  # doctest: +SKIP
    """

    def __init__(
        self,
        data_dir: str,
        images_pattern: str = "images/{split}",
        annotations_pattern: str = "annotations/instances_{split}.json",
        image_size: int = 64,
        batch_size: int = 16,
        num_workers: NumWorkers = "auto",
        in_channels: int = 3,
        augment: bool = True,
        invalid_boxes: InvalidBoxes = "clip",
        min_visibility: float = 0.3,
        seed: int = 0,
        in_chans: int | None = None,
        intensity_window: list[float] | None = None,
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
        if invalid_boxes not in ("clip", "error"):
            raise ConfigError(f"invalid_boxes must be 'clip' or 'error', got {invalid_boxes!r}")
        self.data_dir = Path(data_dir)
        self.images_pattern, self.annotations_pattern = images_pattern, annotations_pattern
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.in_channels, self.augment, self.invalid_boxes = in_channels, augment, invalid_boxes
        self.min_visibility, self.seed = min_visibility, seed
        self.intensity_window = check_window(intensity_window)
        self.mean, self.std = resolve_normalization(in_channels)
        self.class_names: list[str] | None = None
        self.stats: dict[str, dict[str, int]] = {}

    @property
    def num_classes(self) -> int | None:
        """Number of categories, once a split has been read."""
        return len(self.class_names) if self.class_names is not None else None

    def split_dir(self, split: str) -> Path:
        """The image folder of a split."""
        return self.image_root / self.images_pattern.format(split=split)

    def annotation_file(self, split: str) -> Path:
        """The COCO JSON of a split."""
        return self.image_root / self.annotations_pattern.format(split=split)

    def missing_data_hint(self) -> str:
        """How to lay out the data."""
        return (
            f"Check data_dir: it must hold {self.images_pattern.format(split='<split>')}/ and "
            f"{self.annotations_pattern.format(split='<split>')} for train and val."
        )

    def _dataset(self, split: str, train: bool) -> CocoDetectionDataset | ReplayableViews:
        folder = self._require_split(split)
        views = train and self.num_views is not None
        dataset = CocoDetectionDataset(
            self.annotation_file(split),
            folder,
            transform=detection_transforms(
                self.image_size,
                train and self.augment,
                self.in_channels,
                min_visibility=self.min_visibility,
                seed=self.seed,
            ),
            in_channels=self.in_channels,
            invalid_boxes=self.invalid_boxes,
            class_names=self.class_names,
            intensity_window=self.intensity_window,
        )
        self.class_names = dataset.class_names
        self.stats[split] = dict(dataset.stats)
        counts = dataset.stats
        rank_zero_info(
            f"{split}: {counts['images']} images ({counts['empty_images']} without annotations), "
            f"{counts['annotations']} boxes; {counts['clipped']} clipped to the image, {counts['dropped']} dropped "
            f"(zero area), {counts['crowd']} crowd annotations left out"
        )
        return ReplayableViews(dataset, None, self.num_views, seed=self.seed) if views else dataset

    def _loader(self, dataset: Dataset | None, stage: str, shuffle: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup({stage!r}) must run before its {stage} dataloader.")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            **self.loader_order(dataset, shuffle),
            **self.loader_settings(),
            collate_fn=detection_collate,  # targets stay a list: their box counts differ
            worker_init_fn=seed_augmentation_worker,  # replayable views reseed per sample: harmless there
        )


class ShapesDetection(GeneratedShapes, CocoDetection):
    """Detection of the synthetic shapes (six classes), generated into ``data_dir/coco`` on first use.

    Reads the COCO JSON and images ``visiondistill synth`` writes; the generation parameters are checked against
    ``data_dir/meta.json``, so data generated with other settings is never used silently.

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
        in_chans: Deprecated spelling of ``in_channels`` (configs written before the rename).
        num_views: Replayable augmentation views per training image, for a teacher-output cache (see
            `CocoDetection`); ``None``: fresh augmentation every time.

    Example::

        >>> dm = ShapesDetection("data/shapes_detection", image_size=64)  # doctest: +SKIP
        >>> dm.prepare_data()  # generates data/shapes_detection/coco once  # doctest: +SKIP
    """

    shapes_task = "detection"

    def __init__(
        self,
        data_dir: str = "data/shapes_detection",
        image_size: int = 64,
        batch_size: int = 16,
        num_workers: NumWorkers = "auto",
        in_channels: int = 3,
        augment: bool = True,
        generate: bool = True,
        num_train: int = 1000,
        num_val: int = 200,
        num_test: int = 200,
        difficulty: float = 0.0,
        seed: int = 0,
        in_chans: int | None = None,
        num_views: int | None = None,
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            in_channels=in_channels,
            augment=augment,
            seed=seed,
            in_chans=in_chans,
            num_views=num_views,
        )
        self.class_names = list(SHAPE_CLASSES)
        self.init_generation(generate, num_train, num_val, num_test, difficulty)

    @property
    def image_root(self) -> Path:
        """``data_dir/coco`` (where the generator writes the COCO group)."""
        return self.data_dir / "coco"
