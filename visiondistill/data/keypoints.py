"""Top-down keypoint data: instance crops from COCO keypoint annotations, Gaussian target heatmaps, data modules.

Every annotated instance becomes one sample: a square crop around its box (``padding`` × the box's longer side), warped
to ``input_size × input_size`` with one affine transform, and ``K`` Gaussian target heatmaps at ``1/heatmap_stride`` of
that size. Training adds a random scale and shift of the crop (and, where keypoint identity allows it, a rotation),
albumentations' keypoint-aware ``Affine`` and photometric steps, and a horizontal flip that swaps the left/right
keypoint pairs.

Coordinates are continuous pixel coordinates, as in COCO and `visiondistill.data.shapes`: pixel ``(row, col)`` covers
``[col, col + 1) × [row, row + 1)``. Heatmap pixel ``j`` is centred on input coordinate ``(j + 0.5) · stride``.

Rules for imperfect annotations (each one tested):

- a keypoint labelled ``v > 0`` whose ``(x, y)`` lies outside its image is marked invisible (``v = 0``) and counted
  (`KeypointCrops.outside_image`); one that leaves the crop after augmentation is marked invisible for that sample;
- an annotation with another number of keypoints than the data set's ``K`` is an error naming the annotation id;
- an annotation of ``2·K`` values (``x, y`` pairs without visibility flags) is an error naming the annotation id;
- flip pairs that name keypoints outside ``0 … K−1``, or one keypoint twice, are an error naming the pair.

The synthetic shapes (`ShapesKeypoints`) have four keypoints per object, its *extreme tips*: ``top``, ``right``,
``bottom`` and ``left`` — of the shape's corners or tips (the generator's keypoint slots), the one with the smallest
``y``, the largest ``x``, the largest ``y`` and the smallest ``x``. The generator's slot order follows each shape's
random rotation, which no image shows (a square turned by 90° looks the same), so slot ``i`` is not a learnable
keypoint; the extreme tips are defined by the image alone, are the same kind of point for every shape class, and have
a natural left/right pair for flipping.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import Dataset

from visiondistill.data.channels import resolve_in_channels
from visiondistill.data.errors import CorruptImageError, DataError, MissingDataError
from visiondistill.data.generated import GeneratedShapes
from visiondistill.data.shapes import SHAPE_CLASSES
from visiondistill.data.splits import SplitFolderDataModule
from visiondistill.data.transforms import resolve_normalization

__all__ = [
    "SHAPE_KEYPOINT_NAMES",
    "SHAPE_TIPS",
    "COCOKeypoints",
    "KeypointCrops",
    "KeypointInstance",
    "ShapesKeypoints",
    "check_flip_pairs",
    "crop_matrix",
    "extreme_tips",
    "gaussian_heatmaps",
    "read_coco_keypoints",
]

#: The keypoints of `ShapesKeypoints`, and their left/right pair.
SHAPE_KEYPOINT_NAMES: tuple[str, ...] = ("top", "right", "bottom", "left")
SHAPE_FLIP_PAIRS: tuple[tuple[int, int], ...] = ((1, 3),)
#: Corners or tips per shape class: the generator's first ``n`` keypoint slots (see `ShapesGenerator`). A circle's
#: four slots are points of its invisible rotation, not features of the image, so circles have none.
SHAPE_TIPS: dict[str, int] = {"square": 4, "triangle": 3, "star": 5, "hexagon": 6, "cross": 8}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def check_flip_pairs(
    flip_pairs: Sequence[Sequence[int]] | None, num_keypoints: int, keypoint_names: Sequence[str] | None = None
) -> list[tuple[int, int]]:
    """Validates left/right swap pairs.

    Args:
        flip_pairs: Pairs of keypoint indices that trade places under a horizontal flip.
        num_keypoints: ``K``.
        keypoint_names: Names, quoted in messages.

    Returns:
        The pairs as tuples.

    Raises:
        ValueError: For a pair that is not two indices, an index outside ``0 … K−1`` or a keypoint named twice.

    Example::

        >>> check_flip_pairs([[1, 3]], 4)
        [(1, 3)]
    """
    pairs: list[tuple[int, int]] = []
    seen: set[int] = set()
    names = f" ({', '.join(keypoint_names)})" if keypoint_names else ""
    for pair in flip_pairs or ():
        if len(pair) != 2 or any(isinstance(i, bool) or not isinstance(i, int | np.integer) for i in pair):
            raise ValueError(f"flip pair {list(pair)!r} must be two keypoint indices")
        a, b = int(pair[0]), int(pair[1])
        bad = [i for i in (a, b) if not 0 <= i < num_keypoints]
        if bad:
            raise ValueError(
                f"flip pair {[a, b]} names keypoint(s) {bad} that do not exist: there are {num_keypoints} keypoints, "
                f"indices 0..{num_keypoints - 1}{names}"
            )
        if a == b or a in seen or b in seen:
            raise ValueError(f"flip pair {[a, b]}: a keypoint may appear in at most one pair, and not with itself")
        seen.update((a, b))
        pairs.append((a, b))
    return pairs


def flip_permutation(flip_pairs: Sequence[tuple[int, int]], num_keypoints: int) -> list[int]:
    """Index ``i`` of the flipped keypoints takes keypoint ``permutation[i]`` of the original."""
    permutation = list(range(num_keypoints))
    for a, b in flip_pairs:
        permutation[a], permutation[b] = b, a
    return permutation


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


def crop_matrix(
    box: Sequence[float],
    output_size: int,
    padding: float = 1.25,
    scale: float = 1.0,
    rotation: float = 0.0,
    shift: Sequence[float] = (0.0, 0.0),
) -> np.ndarray:
    """The affine map from image coordinates to the coordinates of a square crop around a box.

    The crop is centred on the box (moved by ``shift`` × its side), has side ``padding · scale · max(w, h)`` and is
    turned by ``rotation`` degrees (counter-clockwise on screen) about its centre. Both sides use continuous pixel
    coordinates (see the module docstring).

    Args:
        box: ``[x, y, w, h]`` (COCO).
        output_size: Side of the crop in output pixels.
        padding: Crop side over the box's longer side.
        scale: Extra zoom factor (> 1 shows more context).
        rotation: Degrees.
        shift: Centre offset as fractions of the crop side.

    Returns:
        A ``2×3`` float64 matrix: ``crop_xy = M @ [x, y, 1]``.

    Example::

        >>> m = crop_matrix([10, 20, 8, 4], output_size=64, padding=2.0)
        >>> (m @ [14, 22, 1]).tolist()  # the box centre goes to the crop centre
        [32.0, 32.0]
    """
    x, y, w, h = (float(v) for v in box)
    side = max(w, h, 1e-3) * padding * scale
    cx, cy = x + w / 2 + shift[0] * side, y + h / 2 + shift[1] * side
    zoom = output_size / side
    angle = math.radians(rotation)
    cos, sin = math.cos(angle) * zoom, math.sin(angle) * zoom
    # rotate about the crop centre (y points down, so +angle turns counter-clockwise on screen), then centre it
    linear = np.array([[cos, sin], [-sin, cos]])
    offset = np.array([output_size / 2, output_size / 2]) - linear @ np.array([cx, cy])
    return np.concatenate([linear, offset[:, None]], axis=1)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def _invert(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def _pixel_centre_matrix(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` (continuous coordinates) in the pixel-centre coordinates cv2 and albumentations use (``x − ½``)."""
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.array([0.5, 0.5]) - 0.5
    return shifted


def gaussian_heatmaps(keypoints: np.ndarray, size: int, stride: int, sigma: float) -> np.ndarray:
    """Unnormalised Gaussian heatmaps (peak 1 at the sub-pixel keypoint location), zero for ``v = 0``.

    Args:
        keypoints: ``K×3`` ``(x, y, v)`` in input pixels (continuous coordinates).
        size: Heatmap side.
        stride: Input pixels per heatmap pixel.
        sigma: Gaussian standard deviation, in heatmap pixels.

    Returns:
        ``float32`` array ``K×size×size``.

    Example::

        >>> h = gaussian_heatmaps(np.array([[10.0, 6.0, 2.0]]), size=8, stride=4, sigma=1.0)
        >>> np.unravel_index(h[0].argmax(), h[0].shape), float(h[0].max().round(3))
        ((np.int64(1), np.int64(2)), 1.0)
    """
    grid = np.arange(size, dtype=np.float32) + 0.5
    heatmaps = np.zeros((len(keypoints), size, size), dtype=np.float32)
    for k, (x, y, v) in enumerate(keypoints):
        if v <= 0:
            continue
        gx = np.exp(-((grid - x / stride) ** 2) / (2 * sigma**2))
        gy = np.exp(-((grid - y / stride) ** 2) / (2 * sigma**2))
        heatmaps[k] = gy[:, None] * gx[None, :]
    return heatmaps


@dataclass
class KeypointInstance:
    """One annotated instance of a keypoint data set (image coordinates).

    Attributes:
        annotation_id: COCO annotation id.
        image_id: COCO image id.
        file_name: Image file name, relative to the image folder.
        bbox: ``[x, y, w, h]``.
        area: COCO ``area`` (used by OKS).
        keypoints: ``K×3`` ``(x, y, v)``, after the out-of-image rule.
    """

    annotation_id: int
    image_id: int
    file_name: str
    bbox: np.ndarray
    area: float
    keypoints: np.ndarray


@dataclass
class CocoKeypointsFile:
    """What `read_coco_keypoints` found in a file, and what it set aside."""

    instances: list[KeypointInstance]
    num_keypoints: int
    keypoint_names: list[str]
    outside_image: int = 0  # labelled keypoints outside their image, marked invisible
    skipped: int = 0  # crowd, unlabelled, boxless or (with a converter) unconvertible annotations


KeypointConverter = Callable[[np.ndarray, str], "np.ndarray | None"]


def read_coco_keypoints(
    path: str | Path,
    num_keypoints: int | None = None,
    category_ids: Sequence[int] | None = None,
    converter: KeypointConverter | None = None,
    converted_keypoints: int | None = None,
) -> CocoKeypointsFile:
    """Reads and checks the keypoint annotations of a COCO JSON file.

    Args:
        path: The annotation file.
        num_keypoints: ``K`` every annotation must have; ``None`` takes the length of the first used category's
            ``keypoints`` list.
        category_ids: Categories to use; ``None`` for all.
        converter: Maps an annotation's ``K×3`` keypoints and its category name to the keypoints used (``None``
            skips the instance); applied after the checks.
        converted_keypoints: Keypoint count after ``converter``.

    Returns:
        The instances (crowds, annotations without a labelled keypoint and boxes under one pixel are skipped).

    Raises:
        MissingDataError: When the file does not exist.
        DataError: For unreadable JSON, no category with keypoints, or a bad annotation: another number of keypoints,
            missing visibility flags, or visibility values other than 0, 1, 2 (the message names the annotation id).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"Keypoint annotation file '{path}' does not exist.", path=path)
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"Cannot read the COCO annotation file '{path}' ({err}).") from err
    categories = {int(c["id"]): c for c in content.get("categories", [])}
    wanted = set(categories) if category_ids is None else {int(c) for c in category_ids}
    unknown = sorted(wanted - set(categories))
    if unknown:
        raise DataError(f"'{path}' has no categories {unknown}; its categories: {sorted(categories)}")
    if num_keypoints is None:
        declared = [len(categories[c].get("keypoints") or []) for c in sorted(wanted)]
        declared = [n for n in declared if n]
        if not declared:
            raise DataError(
                f"'{path}': none of the categories {sorted(wanted)} lists keypoint names; set num_keypoints"
            )
        num_keypoints = declared[0]
    names = next(
        (
            list(categories[c]["keypoints"])
            for c in sorted(wanted)
            if len(categories[c].get("keypoints") or []) == num_keypoints
        ),
        [f"kp_{i}" for i in range(num_keypoints)],
    )
    images = {int(i["id"]): i for i in content.get("images", [])}
    result = CocoKeypointsFile([], num_keypoints, names)
    for ann in content.get("annotations", []):
        if int(ann.get("category_id", -1)) not in wanted:
            continue
        ann_id = ann.get("id")
        values = ann.get("keypoints")
        if values is None:
            raise DataError(f"'{path}': annotation id {ann_id} has no 'keypoints' list")
        if len(values) == 2 * num_keypoints:
            raise DataError(
                f"'{path}': annotation id {ann_id} has {len(values)} values: {num_keypoints} (x, y) pairs without "
                "visibility flags? COCO keypoints are (x, y, v) triples, v = 0 unlabelled, 1 labelled but hidden, "
                f"2 visible, so {3 * num_keypoints} values are expected: add the flags (e.g. 2 for each labelled point)"
            )
        if len(values) != 3 * num_keypoints:
            raise DataError(
                f"'{path}': annotation id {ann_id} (image {ann.get('image_id')}) has {len(values) / 3:g} keypoints "
                f"({len(values)} values) but the data set has {num_keypoints}; fix the annotation or set "
                "num_keypoints / category_ids"
            )
        keypoints = np.asarray(values, dtype=np.float32).reshape(num_keypoints, 3)
        flags = set(np.unique(keypoints[:, 2]).tolist())
        if not flags <= {0.0, 1.0, 2.0}:
            raise DataError(
                f"'{path}': annotation id {ann_id} has visibility flags {sorted(flags)}; COCO allows 0 (unlabelled), "
                "1 (labelled, hidden) and 2 (visible)"
            )
        image = images.get(int(ann.get("image_id", -1)))
        if image is None:
            raise DataError(f"'{path}': annotation id {ann_id} refers to image id {ann.get('image_id')}, not listed")
        width, height = float(image["width"]), float(image["height"])
        labelled = keypoints[:, 2] > 0
        outside = labelled & (
            (keypoints[:, 0] < 0) | (keypoints[:, 0] >= width) | (keypoints[:, 1] < 0) | (keypoints[:, 1] >= height)
        )
        result.outside_image += int(outside.sum())
        keypoints[outside, 2] = 0
        bbox = np.asarray(ann.get("bbox", [0, 0, 0, 0]), dtype=np.float32)
        if converter is not None:
            converted = converter(keypoints, str(categories[int(ann["category_id"])].get("name", "")))
            if converted is None:
                result.skipped += 1
                continue
            keypoints = np.asarray(converted, dtype=np.float32)
        if ann.get("iscrowd", 0) or not (keypoints[:, 2] > 0).any() or min(bbox[2], bbox[3]) < 1:
            result.skipped += 1
            continue
        result.instances.append(
            KeypointInstance(
                int(ann_id), int(image["id"]), str(image["file_name"]), bbox, float(ann.get("area", 0.0)), keypoints
            )
        )
    if converted_keypoints is not None and converted_keypoints != result.num_keypoints:
        result.num_keypoints = converted_keypoints
        result.keypoint_names = [f"kp_{i}" for i in range(converted_keypoints)]  # the caller names them
    return result


class KeypointCrops(Dataset):
    """Instance crops of a COCO keypoint data set, with target heatmaps (see the module docstring).

    A sample is a dict: ``image`` (``C×S×S`` float32, normalised), ``target`` (``K×h×w`` heatmaps), ``target_weight``
    (``K``, 1 for labelled keypoints), ``keypoints`` (``K×3`` in crop pixels, ``v = 0`` outside the crop),
    ``box_size`` (the box's longer side in crop pixels: the PCK normaliser), ``to_image`` (``2×3`` map from crop to
    image coordinates), ``image_keypoints`` (``K×3``), ``bbox`` (``xywh``) and ``area`` in image coordinates, and
    ``image_id`` / ``annotation_id``.

    Args:
        annotations: What `read_coco_keypoints` read.
        image_dir: Folder the annotations' ``file_name`` entries are relative to.
        input_size: Crop side ``S``.
        heatmap_stride: Input pixels per heatmap pixel (the model's stride).
        sigma: Target Gaussian standard deviation, in heatmap pixels.
        padding: Crop side over the box's longer side.
        train: Augment (random scale, shift, rotation, flip, brightness/contrast).
        flip_pairs: Left/right keypoint pairs swapped by a flip.
        scale_range: Training zoom factors ``(low, high)``.
        shift: Largest training centre shift, as a fraction of the crop side.
        rotation: Largest training rotation in degrees (0 when keypoints are defined by image axes, as the shapes').
        flip_probability: Chance of a horizontal flip in training.
        in_channels: 3 for RGB, 1 for grayscale.

    Raises:
        ValueError: For bad sizes, a stride that does not divide ``input_size``, or bad flip pairs.
    """

    def __init__(
        self,
        annotations: CocoKeypointsFile,
        image_dir: str | Path,
        input_size: int = 64,
        heatmap_stride: int = 4,
        sigma: float = 1.0,
        padding: float = 1.25,
        train: bool = False,
        flip_pairs: Sequence[Sequence[int]] | None = None,
        scale_range: tuple[float, float] = (0.8, 1.25),
        shift: float = 0.08,
        rotation: float = 0.0,
        flip_probability: float = 0.5,
        in_channels: int = 3,
    ) -> None:
        if input_size <= 0 or heatmap_stride <= 0 or input_size % heatmap_stride:
            raise ValueError(
                f"need input_size > 0 divisible by heatmap_stride > 0, got {input_size!r} and {heatmap_stride!r}"
            )
        if not sigma > 0 or not padding >= 1:
            raise ValueError(f"need sigma > 0 and padding >= 1, got sigma={sigma!r}, padding={padding!r}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {in_channels!r}")
        self.instances = annotations.instances
        self.num_keypoints = annotations.num_keypoints
        self.keypoint_names = annotations.keypoint_names
        self.outside_image = annotations.outside_image
        self.skipped = annotations.skipped
        self.image_dir = Path(image_dir)
        self.input_size, self.stride, self.sigma, self.padding = input_size, heatmap_stride, sigma, padding
        self.train = train
        self.flip_pairs = check_flip_pairs(flip_pairs, self.num_keypoints, self.keypoint_names)
        self.permutation = flip_permutation(self.flip_pairs, self.num_keypoints)
        self.scale_range, self.shift, self.rotation = scale_range, shift, rotation
        self.flip_probability = flip_probability if train else 0.0
        self.in_channels = in_channels
        mean, std = resolve_normalization(in_channels)
        keypoint_params = A.KeypointParams(format="xy", remove_invisible=False)
        steps: list[A.BasicTransform] = []
        if train:
            steps += [
                A.Affine(scale=(0.95, 1.05), translate_percent=(-0.02, 0.02), border_mode=cv2.BORDER_CONSTANT, p=0.5),
                A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            ]
        steps += [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
        # without a geometric step the keypoints pass through unchanged (and albumentations would warn)
        self.pipeline = A.Compose(steps, keypoint_params=keypoint_params if train else None)

    def __len__(self) -> int:
        """Number of instances."""
        return len(self.instances)

    def load_image(self, instance: KeypointInstance) -> np.ndarray:
        """Decode an instance's image as ``uint8`` (``H×W×3`` RGB or ``H×W`` grayscale)."""
        path = self.image_dir / instance.file_name
        if not path.is_file():
            raise MissingDataError(
                f"Image '{path}' (image id {instance.image_id}, annotation id {instance.annotation_id}) does not exist",
                path=path,
            )
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB" if self.in_channels == 3 else "L"))
        except _DECODE_ERRORS as err:
            raise CorruptImageError.for_file(path, err) from err

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """One instance crop (see the class docstring)."""
        instance = self.instances[index]
        image = self.load_image(instance)
        scale, rotation, shift, flip = 1.0, 0.0, (0.0, 0.0), False
        if self.train:
            # torch's generator: DataLoader seeds it in every worker (NumPy's state would be the same in each)
            u = torch.rand(5).tolist()
            low, high = self.scale_range
            scale = low + (high - low) * u[0]
            rotation = self.rotation * (2 * u[1] - 1)
            shift = (self.shift * (2 * u[2] - 1), self.shift * (2 * u[3] - 1))
            flip = u[4] < self.flip_probability
        size = self.input_size
        matrix = crop_matrix(instance.bbox, size, self.padding, scale, rotation, shift)
        crop = cv2.warpAffine(
            image, _pixel_centre_matrix(matrix), (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
        keypoints = instance.keypoints.copy()
        keypoints[:, :2] = _apply(matrix, keypoints[:, :2])
        if flip:
            crop = np.ascontiguousarray(crop[:, ::-1])
            keypoints[:, 0] = size - keypoints[:, 0]
            keypoints = keypoints[self.permutation]
            matrix = np.array([[-1.0, 0.0, size], [0.0, 1.0, 0.0]]) @ np.vstack([matrix, [0.0, 0.0, 1.0]])
        # albumentations' keypoints sit on pixel centres: shift by half a pixel there and back
        if self.train:
            # albumentations draws from its own generator, seeded from the OS unless set: seed it from torch too,
            # so a seeded run (and every DataLoader worker) gets reproducible augmentations
            self.pipeline.set_random_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
            out = self.pipeline(image=crop, keypoints=keypoints[:, :2] - 0.5)
            keypoints[:, :2] = np.asarray(out["keypoints"], dtype=np.float32).reshape(-1, 2) + 0.5
        else:
            out = self.pipeline(image=crop)
        outside = (keypoints[:, 0] < 0) | (keypoints[:, 0] >= size) | (keypoints[:, 1] < 0) | (keypoints[:, 1] >= size)
        keypoints[outside, 2] = 0
        longest = max(float(instance.bbox[2]), float(instance.bbox[3]))
        box_size = longest * size / (max(longest, 1e-3) * self.padding * scale)  # the box's side in crop pixels
        heatmaps = gaussian_heatmaps(keypoints, size // self.stride, self.stride, self.sigma)
        return {
            "image": out["image"],
            "target": torch.from_numpy(heatmaps),
            "target_weight": torch.from_numpy((keypoints[:, 2] > 0).astype(np.float32)),
            "keypoints": torch.from_numpy(keypoints),
            "box_size": torch.tensor(box_size, dtype=torch.float32),
            "to_image": torch.from_numpy(_invert(matrix).astype(np.float32)),
            "image_keypoints": torch.from_numpy(instance.keypoints.copy()),
            "bbox": torch.from_numpy(instance.bbox.copy()),
            "area": torch.tensor(instance.area, dtype=torch.float32),
            "image_id": torch.tensor(instance.image_id),
            "annotation_id": torch.tensor(instance.annotation_id),
        }


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
        num_workers: DataLoader worker processes.
        in_channels: 3 for RGB, 1 for grayscale.
        augment: Augment the training crops.
        seed: Seed of the training shuffle order.
        in_chans: Deprecated spelling of ``in_channels`` (configs written before the rename).

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
        num_workers: int = 2,
        in_channels: int = 3,
        augment: bool = True,
        seed: int = 0,
        in_chans: int | None = None,
    ) -> None:
        super().__init__()
        if input_size <= 0 or batch_size <= 0 or num_workers < 0 or heatmap_stride <= 0:
            raise ValueError(
                f"need input_size > 0, heatmap_stride > 0, batch_size > 0 and num_workers >= 0, got "
                f"input_size={input_size!r}, heatmap_stride={heatmap_stride!r}, batch_size={batch_size!r}, "
                f"num_workers={num_workers!r}"
            )
        if input_size % heatmap_stride:
            raise ValueError(f"input_size {input_size} is not a multiple of heatmap_stride {heatmap_stride}")
        in_channels = resolve_in_channels(in_channels, in_chans, owner=type(self).__name__)
        if keypoint_names is not None and num_keypoints is not None and len(keypoint_names) != num_keypoints:
            raise ValueError(f"keypoint_names has {len(keypoint_names)} names but num_keypoints is {num_keypoints}")
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
                f"outside their image and were marked invisible; {read.skipped} annotations skipped"
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
        num_workers: DataLoader worker processes.
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

    def __init__(
        self,
        data_dir: str = "data/shapes_keypoints",
        categories: list[str] | None = None,
        input_size: int = 64,
        heatmap_stride: int = 4,
        sigma: float = 1.0,
        padding: float = 1.25,
        batch_size: int = 32,
        num_workers: int = 2,
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
            raise ValueError(
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
