"""Synthetic "lesions": small, rare blobs of a few lesion classes on a textured, tissue-like grayscale background.

A stand-in for medical segmentation (single-channel images, tiny foreground, heavy class imbalance) that is
generated in seconds and needs no download. Each image shows one to ``max_lesions`` lesions; together they cover a
few percent of the pixels, and the rarer classes appear in fewer images. The classes differ in appearance, as
lesion types do on a scan:

- ``nodule``: bright, smooth, round;
- ``cyst``: dark, with a thin bright rim;
- ``calcification`` (only with three classes): very small, very bright, irregular, and the rarest.

Written as the mask-folder format of `visiondistill.data.segmentation` under ``root/lesions/<split>/{images,masks}``
with ``root/lesions/meta.json`` recording the parameters. The images are 8-bit PNGs, so the example needs no extra
package; real scans go into the same folder format as 16-bit PNG/TIFF or DICOM (``pip install
visiondistill[medical]``) and are read by `MaskFolderSegmentation` with ``in_channels: 1`` and one
``intensity_window: [low, high]`` for the whole data set (e.g. a CT window in Hounsfield units; see
`visiondistill.data.images` and ``docs/data.md``).
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from pytorch_lightning.utilities import rank_zero_info

from visiondistill.core.errors import ConfigError
from visiondistill.data.errors import DataError, MissingDataError
from visiondistill.data.loading import NumWorkers
from visiondistill.data.segmentation import MaskFolderSegmentation

__all__ = ["LESION_CLASSES", "LesionGenerator", "SyntheticLesions", "write_lesion_dataset"]

LESION_CLASSES: tuple[str, ...] = ("nodule", "cyst", "calcification")
_CLASS_WEIGHTS = (0.55, 0.3, 0.15)  # how often each lesion class is drawn: the last is the rarest
_FORMAT = "visiondistill-lesions"
_VERSION = 1


class LesionGenerator:
    """Deterministic generator of synthetic lesion images and masks.

    Args:
        image_size: Height and width in pixels (>= 16).
        num_lesion_classes: 2 (nodule, cyst) or 3 (plus calcification).
        max_lesions: Most lesions per image (at least one is always drawn).

    Raises:
        ValueError: For a too-small image, another class count or a non-positive ``max_lesions``.

    Example::

        >>> image, mask = LesionGenerator(image_size=32).sample(index=0, seed=0)
        >>> image.shape, image.dtype, mask.shape, int(mask.max()) <= 3
        ((32, 32), dtype('uint8'), (32, 32), True)
    """

    def __init__(self, image_size: int = 64, num_lesion_classes: int = 3, max_lesions: int = 3) -> None:
        if image_size < 16:
            raise ConfigError(f"image_size must be at least 16, got {image_size!r}")
        if num_lesion_classes not in (2, 3):
            raise ConfigError(f"num_lesion_classes must be 2 or 3, got {num_lesion_classes!r}")
        if max_lesions < 1:
            raise ConfigError(f"max_lesions must be >= 1, got {max_lesions!r}")
        self.image_size, self.num_lesion_classes, self.max_lesions = image_size, num_lesion_classes, max_lesions

    @property
    def class_names(self) -> list[str]:
        """``background`` then the lesion classes, in mask-value order."""
        return ["background", *LESION_CLASSES[: self.num_lesion_classes]]

    def config(self) -> dict[str, Any]:
        """The constructor arguments as JSON values."""
        return {
            "image_size": self.image_size,
            "num_lesion_classes": self.num_lesion_classes,
            "max_lesions": self.max_lesions,
        }

    def sample(self, index: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Generate image ``index`` of the data set with ``seed``.

        Returns:
            A ``uint8`` grayscale image ``H x W`` and its ``uint8`` mask (0 background, ``k`` lesion class ``k``).
        """
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
        size = self.image_size
        image = _tissue(rng, size)
        mask = np.zeros((size, size), np.uint8)
        weights = np.array(_CLASS_WEIGHTS[: self.num_lesion_classes])
        scale = size / 64
        for _ in range(int(rng.integers(1, self.max_lesions + 1))):
            label = int(rng.choice(self.num_lesion_classes, p=weights / weights.sum())) + 1
            centre = rng.uniform(0.12 * size, 0.88 * size, size=2)
            footprint = np.zeros((size, size), np.uint8)
            if label == 3:  # calcification: a tiny bright irregular cluster
                radius = rng.uniform(1.2, 2.2) * scale
                for _ in range(3):
                    offset = rng.normal(0, radius * 0.6, size=2)
                    x, y = (centre + offset).round().astype(int)
                    cv2.circle(footprint, (int(x), int(y)), max(1, int(round(radius * 0.7))), 1, -1)
            else:
                axes = rng.uniform(2.5, 5.0, size=2) * scale
                cv2.ellipse(
                    footprint,
                    tuple(int(v) for v in centre.round()),
                    tuple(max(1, int(round(a))) for a in axes),
                    float(rng.uniform(0, 180)),
                    0,
                    360,
                    1,
                    -1,
                )
            region = footprint.astype(bool)
            if not region.any():
                continue
            soft = cv2.GaussianBlur(footprint.astype(np.float32), (0, 0), sigmaX=0.8 * scale)
            if label == 1:
                image += soft * rng.uniform(45, 75)
            elif label == 2:
                rim = cv2.dilate(footprint, np.ones((3, 3), np.uint8)) - footprint
                image -= soft * rng.uniform(45, 70)
                image += cv2.GaussianBlur(rim.astype(np.float32), (0, 0), sigmaX=0.5) * rng.uniform(25, 45)
            else:
                image += soft * rng.uniform(80, 110)
            mask[region] = label
        image += rng.normal(0, rng.uniform(3, 7), size=image.shape).astype(np.float32)
        return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def _tissue(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float32 tissue-like background: a smooth organ-shaped intensity field plus multi-scale mottled texture."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    xx, yy = np.meshgrid(coords, coords)
    cx, cy = rng.uniform(0.35, 0.65, size=2)
    organ = np.exp(-(((xx - cx) / rng.uniform(0.4, 0.7)) ** 2 + ((yy - cy) / rng.uniform(0.4, 0.7)) ** 2))
    image = rng.uniform(60, 90) + rng.uniform(30, 60) * organ
    amplitude, cells = rng.uniform(10, 18), 3
    while cells <= size // 2:
        grid = rng.normal(0.0, 1.0, size=(cells, cells)).astype(np.float32)
        image = image + amplitude * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        cells, amplitude = cells * 2, amplitude * 0.6
    return image.astype(np.float32)


def _split_seed(seed: int, split: str) -> int:
    return int(np.random.SeedSequence([int(seed), zlib.crc32(split.encode())]).generate_state(1)[0])


def write_lesion_dataset(
    root: str | Path, splits: dict[str, int], generator: LesionGenerator, seed: int = 0
) -> dict[str, Any]:
    """Write ``root/lesions/<split>/{images,masks}/<index>.png`` and ``root/lesions/meta.json``.

    The folder is built beside its final place and moved in when complete, with ``meta.json`` written last.

    Args:
        root: Data-set root (created if needed).
        splits: Images per split; splits with 0 images are skipped.
        generator: The generator.
        seed: Data-set seed (each split derives its own).

    Returns:
        The metadata written, with per-split pixel counts of each class.
    """
    out = Path(root) / "lesions"
    staging = Path(root) / f".lesions-partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    pixel_counts: dict[str, list[int]] = {}
    try:
        for split, count in splits.items():
            if count <= 0:
                continue
            (staging / split / "images").mkdir(parents=True)
            (staging / split / "masks").mkdir(parents=True)
            counts = np.zeros(generator.num_lesion_classes + 1, np.int64)
            for index in range(count):
                image, mask = generator.sample(index, _split_seed(seed, split))
                counts += np.bincount(mask.ravel(), minlength=len(counts))
                Image.fromarray(image).save(staging / split / "images" / f"{index:05d}.png", compress_level=1)
                Image.fromarray(mask).save(staging / split / "masks" / f"{index:05d}.png", compress_level=1)
            pixel_counts[split] = counts.tolist()
        shutil.rmtree(out, ignore_errors=True)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    meta = {
        "format": _FORMAT,
        "version": _VERSION,
        "generator": generator.config(),
        "seed": int(seed),
        "splits": {k: int(v) for k, v in splits.items() if v > 0},
        "class_names": generator.class_names,
        "pixel_counts": pixel_counts,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


class SyntheticLesions(MaskFolderSegmentation):
    """Synthetic lesion segmentation (single-channel), generated into ``data_dir/lesions`` on first use.

    Classes: ``background``, ``nodule``, ``cyst`` and (with three lesion classes) ``calcification``. The parameters
    are checked against ``data_dir/lesions/meta.json``, so data generated with other settings is never used
    silently.

    Args:
        data_dir: Root of the generated data set.
        image_size: Image size to generate and load.
        batch_size: Images per batch.
        num_workers: DataLoader worker processes, or ``auto`` (`visiondistill.data.loading`).
        num_lesion_classes: 2 or 3.
        max_lesions: Most lesions per image.
        augment: Augment training images.
        generate: Generate the data when missing; when false a missing data set is an error.
        num_train: Training images.
        num_val: Validation images.
        num_test: Test images (0: test on val).
        seed: Data-set seed (also seeds the shuffle order).
        verify: Check every pair in ``setup``.
        unlabeled_dir: A folder of images without labels, read with the training transform; their batches are
            interleaved with the labeled ones for the distillation terms (docs/unlabeled.md).
        labeled_fraction: Share of the training images that keep their labels (a seeded, stratified draw); the
            rest are used as unlabeled images. 1 keeps every label.
        labeled_seed: Seed of that draw (default: ``seed``).

    Raises:
        ValueError: For invalid counts, sizes or class counts.

    Example::

        >>> dm = SyntheticLesions("data/lesions", image_size=64)  # doctest: +SKIP
        >>> dm.prepare_data()  # doctest: +SKIP
    """

    def __init__(
        self,
        data_dir: str = "data/lesions",
        image_size: int = 64,
        batch_size: int = 32,
        num_workers: NumWorkers = "auto",
        num_lesion_classes: int = 3,
        max_lesions: int = 3,
        augment: bool = True,
        generate: bool = True,
        num_train: int = 1000,
        num_val: int = 200,
        num_test: int = 200,
        seed: int = 0,
        verify: bool = True,
        unlabeled_dir: str | None = None,
        labeled_fraction: float = 1.0,
        labeled_seed: int | None = None,
    ) -> None:
        if num_train <= 0 or num_val <= 0 or num_test < 0:
            raise ConfigError(
                f"need num_train > 0, num_val > 0 and num_test >= 0, got num_train={num_train!r}, "
                f"num_val={num_val!r}, num_test={num_test!r}"
            )
        self.generator = LesionGenerator(image_size, num_lesion_classes, max_lesions)
        super().__init__(
            data_dir=data_dir,
            class_names=self.generator.class_names,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            in_channels=1,
            ignore_index=None,
            augment=augment,
            verify=verify,
            seed=seed,
            unlabeled_dir=unlabeled_dir,
            labeled_fraction=labeled_fraction,
            labeled_seed=labeled_seed,
        )
        self.generate = generate
        self.splits = {k: v for k, v in (("train", num_train), ("val", num_val), ("test", num_test)) if v}

    @property
    def image_root(self) -> Path:
        """``data_dir/lesions``."""
        return self.data_dir / "lesions"

    def missing_data_hint(self) -> str:
        """How to create the data."""
        return "Set generate: true to generate it."

    def _differences(self) -> list[str] | None:
        path = self.image_root / "meta.json"
        if not path.is_file():
            return None
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"Cannot read '{path}' ({err}); delete '{self.image_root}' to regenerate it.") from err
        want = {"format": _FORMAT, "version": _VERSION, "generator": self.generator.config(), "seed": self.seed}
        want["splits"] = self.splits
        return [f"{k}: on disk {meta.get(k)!r}, requested {v!r}" for k, v in want.items() if meta.get(k) != v]

    def check_data(self) -> None:
        """Check the data exists and matches the requested parameters.

        Raises:
            MissingDataError: When the data or its ``meta.json`` is missing.
            DataError: When ``meta.json`` records other parameters.
        """
        differences = self._differences()
        if differences is None:
            raise MissingDataError(
                f"No lesion data set at '{self.image_root}' (no meta.json). {self.missing_data_hint()}",
                path=self.image_root,
            )
        if differences:
            raise DataError(
                f"The lesion data set at '{self.image_root}' does not match this data module ("
                + "; ".join(differences)
                + f"). Point data_dir at another folder, or delete '{self.image_root}' to regenerate it."
            )

    def prepare_data(self) -> None:
        """Generate the data set when it is missing (and ``generate`` is true), then check it."""
        if self._differences() is None and self.generate:
            rank_zero_info(f"Generating the synthetic lesion data set in '{self.image_root}'.")
            write_lesion_dataset(self.data_dir, self.splits, self.generator, seed=self.seed)
        self.check_data()

    def setup(self, stage: str | None = None) -> None:
        """Check the data on disk, then build the datasets."""
        self.check_data()
        super().setup(stage)
