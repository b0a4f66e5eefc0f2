"""Keypoint geometry: left/right flip pairs, the crop around a box, affine maps and Gaussian target heatmaps.

Coordinates are continuous pixel coordinates, as in COCO and `visiondistill.data.shapes`: pixel ``(row, col)`` covers
``[col, col + 1) × [row, row + 1)``. Heatmap pixel ``j`` is centred on input coordinate ``(j + 0.5) · stride``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from visiondistill.core.errors import ConfigError

__all__ = [
    "apply_affine",
    "check_flip_pairs",
    "crop_matrix",
    "flip_permutation",
    "gaussian_heatmaps",
    "invert_affine",
    "pixel_centre_matrix",
]


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
            raise ConfigError(f"flip pair {list(pair)!r} must be two keypoint indices")
        a, b = int(pair[0]), int(pair[1])
        bad = [i for i in (a, b) if not 0 <= i < num_keypoints]
        if bad:
            raise ConfigError(
                f"flip pair {[a, b]} names keypoint(s) {bad} that do not exist: there are {num_keypoints} keypoints, "
                f"indices 0..{num_keypoints - 1}{names}"
            )
        if a == b or a in seen or b in seen:
            raise ConfigError(f"flip pair {[a, b]}: a keypoint may appear in at most one pair, and not with itself")
        seen.update((a, b))
        pairs.append((a, b))
    return pairs


def flip_permutation(flip_pairs: Sequence[tuple[int, int]], num_keypoints: int) -> list[int]:
    """Index ``i`` of the flipped keypoints takes keypoint ``permutation[i]`` of the original."""
    permutation = list(range(num_keypoints))
    for a, b in flip_pairs:
        permutation[a], permutation[b] = b, a
    return permutation


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


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Maps ``N×2`` points with a ``2×3`` affine matrix."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a ``2×3`` affine matrix, as ``2×3``."""
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def pixel_centre_matrix(matrix: np.ndarray) -> np.ndarray:
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
