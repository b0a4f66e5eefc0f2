"""Overlays and grids of explanation maps: numpy in, ``H×W×3`` uint8 images out.

Rendering uses matplotlib's object-oriented API on an Agg canvas (no pyplot, no global figure state), so it is
safe inside training processes and headless machines.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

ArrayLike = Tensor | np.ndarray

#: Title colours: a prediction that matches the true label, and one that does not.
RIGHT_COLOR, WRONG_COLOR = "#1a7f37", "#cf222e"


def _numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().to(torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def to_hwc(images: ArrayLike) -> np.ndarray:
    """Turns ``N×C×H×W`` images in [0, 1] into ``N×H×W×3`` float arrays (grey repeated, extra channels dropped).

    Args:
        images: Images with values in [0, 1] (values outside are clipped).

    Returns:
        Float32 array ``(N, H, W, 3)``.

    Raises:
        ValueError: When ``images`` is not 4-D.
    """
    array = _numpy(images)
    if array.ndim != 4:
        raise ValueError(f"images must be N×C×H×W, got shape {array.shape}")
    if array.shape[1] == 1:
        array = np.repeat(array, 3, axis=1)
    elif array.shape[1] == 2:
        array = np.concatenate([array, array[:, :1]], axis=1)
    return np.clip(array[:, :3].transpose(0, 2, 3, 1), 0.0, 1.0)


def normalize_maps(maps: ArrayLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Min-max scales each map to [0, 1] (a constant map becomes 0), after an optional bilinear resize.

    Args:
        maps: Maps ``(N, h, w)``.
        size: ``(H, W)`` to resize to.

    Returns:
        Float32 array ``(N, H, W)``.
    """
    tensor = torch.as_tensor(_numpy(maps))
    if tensor.ndim != 3:
        raise ValueError(f"maps must be N×H×W, got shape {tuple(tensor.shape)}")
    if size is not None and tuple(tensor.shape[-2:]) != tuple(size):
        tensor = F.interpolate(tensor.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
    flat = tensor.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1)
    span = (flat.max(dim=1).values.view(-1, 1, 1) - low).clamp_min(1e-12)
    return ((tensor - low) / span).numpy()


def overlay(images: ArrayLike, maps: ArrayLike, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blends colour-mapped saliency maps over images.

    Args:
        images: Images ``N×C×H×W`` in [0, 1].
        maps: Maps ``(N, h, w)``; resized to the images and min-max scaled per map.
        alpha: Weight of the colour map (0 = image only, 1 = map only).
        cmap: A matplotlib colour map name.

    Returns:
        Float32 array ``(N, H, W, 3)`` in [0, 1].

    Example::

        >>> overlay(np.zeros((2, 3, 8, 8)), np.random.rand(2, 4, 4)).shape
        (2, 8, 8, 3)
    """
    base = to_hwc(images)
    scaled = normalize_maps(maps, size=base.shape[1:3])
    colored = colormaps[cmap](scaled)[..., :3].astype(np.float32)
    return (1.0 - alpha) * base + alpha * colored


def render_grid(
    panels: Sequence[Sequence[np.ndarray]],
    captions: Sequence[Sequence[str]] | None = None,
    caption_colors: Sequence[Sequence[str | None]] | None = None,
    samples_per_row: int = 4,
    panel_inches: float = 1.4,
    dpi: int = 100,
    title: str | None = None,
) -> np.ndarray:
    """Lays out samples (each a row of panels) in a grid and renders it to an image.

    Args:
        panels: For each sample, its panels: ``H×W×3`` float arrays in [0, 1] (every sample has the same count).
        captions: For each sample, one caption per panel.
        caption_colors: For each sample, a colour per caption (``None`` = black).
        samples_per_row: Samples side by side in one grid row.
        panel_inches: Size of one panel.
        dpi: Resolution.
        title: Figure title.

    Returns:
        The grid as a uint8 array ``(H, W, 3)``.

    Raises:
        ValueError: When there is no sample or samples have different panel counts.
    """
    if not panels:
        raise ValueError("render_grid needs at least one sample")
    per_sample = len(panels[0])
    if per_sample == 0 or any(len(p) != per_sample for p in panels):
        raise ValueError("every sample needs the same, non-zero number of panels")
    per_row = max(1, min(samples_per_row, len(panels)))
    rows = -(-len(panels) // per_row)
    columns = per_row * per_sample
    figure = Figure(figsize=(columns * panel_inches, rows * (panel_inches + 0.2) + (0.3 if title else 0.0)), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for index, sample in enumerate(panels):
        row, first = divmod(index, per_row)
        for j, panel in enumerate(sample):
            ax = axes[row, first * per_sample + j]
            ax.imshow(np.clip(panel, 0.0, 1.0), interpolation="nearest")
            if captions is not None:
                color = caption_colors[index][j] if caption_colors is not None else None
                ax.set_title(captions[index][j], fontsize=7, color=color or "black", pad=2)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92 if title else 0.96, wspace=0.05, hspace=0.3)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _name(index: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= index < len(class_names):
        return str(class_names[index])
    return str(index)


def comparison_grid(
    images: ArrayLike,
    columns: Sequence[tuple[str, ArrayLike]],
    labels: Sequence[str] | None = None,
    column_labels: Sequence[Sequence[str] | None] | None = None,
    column_colors: Sequence[Sequence[str | None] | None] | None = None,
    samples_per_row: int = 4,
    title: str | None = None,
) -> np.ndarray:
    """A grid of ``input | overlay 1 | overlay 2 …`` per sample.

    Args:
        images: Images ``N×C×H×W`` in [0, 1].
        columns: ``(heading, maps)`` pairs; each ``maps`` is ``(N, h, w)`` and is overlaid on the images.
        labels: Caption of each input panel (default ``#i``).
        column_labels: Per column, a caption suffix per sample (e.g. the prediction), or ``None``.
        column_colors: Per column, a caption colour per sample, or ``None``.
        samples_per_row: Samples side by side.
        title: Figure title.

    Returns:
        The grid as a uint8 array ``(H, W, 3)``.
    """
    base = to_hwc(images)
    count = base.shape[0]
    overlays = [overlay(images, maps) for _, maps in columns]
    panels, captions, colors = [], [], []
    for i in range(count):
        panels.append([base[i]] + [layer[i] for layer in overlays])
        row_captions = [labels[i] if labels is not None else f"#{i}"]
        row_colors: list[str | None] = [None]
        for c, (heading, _) in enumerate(columns):
            suffix = column_labels[c] if column_labels is not None else None
            row_captions.append(f"{heading}: {suffix[i]}" if suffix is not None else heading)
            color = column_colors[c] if column_colors is not None else None
            row_colors.append(color[i] if color is not None else None)
        captions.append(row_captions)
        colors.append(row_colors)
    return render_grid(panels, captions, colors, samples_per_row=samples_per_row, title=title)


def saliency_grid(
    images: ArrayLike,
    student_maps: ArrayLike,
    teacher_maps: ArrayLike | None = None,
    true_labels: Sequence[int] | None = None,
    student_pred: Sequence[int] | None = None,
    teacher_pred: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    samples_per_row: int = 4,
    title: str | None = None,
) -> np.ndarray:
    """The saliency grid: ``input | teacher CAM | student CAM`` per image, titled with true and predicted labels.

    A prediction's caption is green when it matches the true label and red when it does not.

    Args:
        images: Images ``N×C×H×W`` in [0, 1].
        student_maps: Student CAMs ``(N, h, w)``.
        teacher_maps: Teacher CAMs, or ``None`` (the teacher column is left out).
        true_labels: True class per image, or ``None`` (``-1`` entries mean unknown).
        student_pred: Student's predicted class per image.
        teacher_pred: Teacher's predicted class per image.
        class_names: Names of the classes.
        samples_per_row: Images side by side.
        title: Figure title.

    Returns:
        The grid as a uint8 array ``(H, W, 3)``.

    Example::

        >>> grid = saliency_grid(np.random.rand(2, 3, 16, 16), np.random.rand(2, 4, 4), np.random.rand(2, 4, 4),
        ...                      true_labels=[0, 1], student_pred=[0, 0], teacher_pred=[0, 1])
        >>> grid.dtype, grid.ndim
        (dtype('uint8'), 3)
    """
    count = _numpy(images).shape[0]
    truth = [int(t) for t in true_labels] if true_labels is not None else [-1] * count
    labels = [f"true: {_name(t, class_names)}" if t >= 0 else f"#{i}" for i, t in enumerate(truth)]

    def column(heading: str, maps: ArrayLike, pred: Sequence[int] | None) -> tuple:
        if pred is None:
            return (heading, maps), None, None
        pred = [int(p) for p in pred]
        colors = [None if t < 0 else RIGHT_COLOR if p == t else WRONG_COLOR for p, t in zip(pred, truth, strict=True)]
        return (heading, maps), [_name(p, class_names) for p in pred], colors

    specs = ([column("teacher", teacher_maps, teacher_pred)] if teacher_maps is not None else []) + [
        column("student", student_maps, student_pred)
    ]
    return comparison_grid(
        images,
        [spec[0] for spec in specs],
        labels=labels,
        column_labels=[spec[1] for spec in specs],
        column_colors=[spec[2] for spec in specs],
        samples_per_row=samples_per_row,
        title=title,
    )


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Writes an ``H×W×3`` uint8 image as PNG, creating the folder.

    Args:
        image: The image.
        path: Where to write it.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(path)
    return path
