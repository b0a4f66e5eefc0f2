"""Top-down keypoint samples: a square crop around each annotated instance, with Gaussian target heatmaps.

Every annotated instance becomes one sample: a square crop around its box (``padding`` × the box's longer side), warped
to ``input_size × input_size`` with one affine transform, and ``K`` Gaussian target heatmaps at ``1/heatmap_stride`` of
that size. Training adds a random scale and shift of the crop (and, where keypoint identity allows it, a rotation),
albumentations' keypoint-aware ``Affine`` and photometric steps, and a horizontal flip that swaps the left/right
keypoint pairs. A keypoint that leaves the crop after augmentation is marked invisible (``v = 0``) for that sample.
Coordinates follow `visiondistill.data.keypoints.geometry`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import Dataset

from visiondistill.core.errors import ConfigError
from visiondistill.data.errors import MissingDataError, check_image_files
from visiondistill.data.images import check_window, read_image
from visiondistill.data.keypoints.coco import CocoKeypointsFile, KeypointInstance
from visiondistill.data.keypoints.geometry import (
    apply_affine,
    check_flip_pairs,
    crop_matrix,
    flip_permutation,
    gaussian_heatmaps,
    invert_affine,
    pixel_centre_matrix,
)
from visiondistill.data.transforms import resolve_normalization

__all__ = ["KeypointCrops"]


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
        intensity_window: ``[low, high]`` in the image files' units, mapped to [0, 1] instead of the type's range
            (see `visiondistill.data.images`).

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
        intensity_window: Sequence[float] | None = None,
    ) -> None:
        if input_size <= 0 or heatmap_stride <= 0 or input_size % heatmap_stride:
            raise ConfigError(
                f"need input_size > 0 divisible by heatmap_stride > 0, got {input_size!r} and {heatmap_stride!r}"
            )
        if not sigma > 0 or not padding >= 1:
            raise ConfigError(f"need sigma > 0 and padding >= 1, got sigma={sigma!r}, padding={padding!r}")
        if in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {in_channels!r}")
        self.instances = annotations.instances
        self.num_keypoints = annotations.num_keypoints
        self.keypoint_names = annotations.keypoint_names
        self.outside_image = annotations.outside_image
        self.skipped = annotations.skipped
        self.image_dir = Path(image_dir)
        check_image_files(self.image_dir, (i.file_name for i in self.instances), annotations.path or "the annotations")
        self.input_size, self.stride, self.sigma, self.padding = input_size, heatmap_stride, sigma, padding
        self.train = train
        self.flip_pairs = check_flip_pairs(flip_pairs, self.num_keypoints, self.keypoint_names)
        self.permutation = flip_permutation(self.flip_pairs, self.num_keypoints)
        self.scale_range, self.shift, self.rotation = scale_range, shift, rotation
        self.flip_probability = flip_probability if train else 0.0
        self.in_channels = in_channels
        self.intensity_window = check_window(intensity_window)
        mean, std = resolve_normalization(in_channels)
        keypoint_params = A.KeypointParams(format="xy", remove_invisible=False)
        steps: list[A.BasicTransform] = []
        if train:
            steps += [
                A.Affine(scale=(0.95, 1.05), translate_percent=(-0.02, 0.02), border_mode=cv2.BORDER_CONSTANT, p=0.5),
                A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            ]
        # ToFloat: 8-bit arrays ÷ 255, float arrays (what `read_image` gives, any bit depth) as they are
        steps += [A.ToFloat(), A.Normalize(mean=mean, std=std, max_pixel_value=1.0), ToTensorV2()]
        # without a geometric step the keypoints pass through unchanged (and albumentations would warn)
        self.pipeline = A.Compose(steps, keypoint_params=keypoint_params if train else None)

    def __len__(self) -> int:
        """Number of instances."""
        return len(self.instances)

    def load_image(self, instance: KeypointInstance) -> np.ndarray:
        """Decode an instance's image as ``float32`` in [0, 1], ``H×W×in_channels`` (`read_image`: any bit depth)."""
        path = self.image_dir / instance.file_name
        if not path.is_file():
            raise MissingDataError(
                f"Image '{path}' (image id {instance.image_id}, annotation id {instance.annotation_id}) does not exist",
                path=path,
            )
        return read_image(path, channels=self.in_channels, window=self.intensity_window)

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
            image, pixel_centre_matrix(matrix), (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
        keypoints = instance.keypoints.copy()
        keypoints[:, :2] = apply_affine(matrix, keypoints[:, :2])
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
            "to_image": torch.from_numpy(invert_affine(matrix).astype(np.float32)),
            "image_keypoints": torch.from_numpy(instance.keypoints.copy()),
            "bbox": torch.from_numpy(instance.bbox.copy()),
            "area": torch.tensor(instance.area, dtype=torch.float32),
            "image_id": torch.tensor(instance.image_id),
            "annotation_id": torch.tensor(instance.annotation_id),
        }
