"""``visiondistill predict CHECKPOINT IMAGES --out DIR``: a trained student's predictions on your own images.

The student is rebuilt from the checkpoint alone (`visiondistill.reporting.loader.load_task_module`; the teacher it
was distilled from is never loaded). Every image of the folder (PNG, JPEG, BMP, TIFF, DICOM; any size and bit depth,
through `visiondistill.data.images.read_image`) is prepared as the datamodule's evaluation transform prepares it:
resized to the run's image size (the checkpoint's ``data.image_size``, or ``--image-size``) and normalised with the
datamodules' statistics; the run's ``intensity_window`` applies when the checkpoint records one. What is written, by
task:

- classification: ``predictions.csv`` — ``file``, then ``class_1, probability_1 … class_k, probability_k``;
- segmentation: ``masks/<name>.png`` (class indices, at the image's own size) and ``overlays/<name>.png`` (colours);
- detection: ``detections.json`` — COCO results (``image_id``, ``file_name``, ``category_id`` = label + 1,
  ``category_name``, ``bbox`` ``[x, y, w, h]`` in the image's own pixels, ``score``);
- keypoints: ``keypoints.json`` — COCO keypoint results (``keypoints`` ``[x, y, 1, …]`` in the image's own pixels,
  ``keypoint_scores``, ``score``); a top-down model sees the whole image as one instance, so give it crops;
- every task: ``images.json`` — the COCO ``images`` (id, file name, size) and ``categories`` the results refer to.

``--explain`` adds ``saliency/<name>.png`` (Grad-CAM of the student, and of the teacher given with ``--teacher``,
side by side over the model's input) and ``saliency/<name>.npz`` (the maps), each explaining the student's prediction.

Example::

    visiondistill predict runs/classification/student_kd/checkpoints/best.ckpt my_photos --out predictions --top-k 3
    visiondistill predict runs/segmentation/student/checkpoints/best.ckpt scans --out masks --explain
    visiondistill predict runs/segmentation/student/checkpoints/best.ckpt scans --out explained --explain --teacher T

(``T``: the teacher run's checkpoint, e.g. ``runs/segmentation/teacher/checkpoints/best.ckpt``.)
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from visiondistill.core.errors import VisionDistillError
from visiondistill.core.recorder import resolve_layer
from visiondistill.core.saliency import saliency_adapter_for
from visiondistill.data.errors import MissingDataError
from visiondistill.data.images import IMAGE_EXTENSIONS, check_image, check_window, read_image
from visiondistill.data.keypoints.geometry import apply_affine, crop_matrix, invert_affine, pixel_centre_matrix
from visiondistill.data.transforms import augmentation_pipeline, resolve_normalization
from visiondistill.explain.cam import cam_method, compute_cams
from visiondistill.explain.render import overlay, save_png
from visiondistill.models.checkpoints import CheckpointError, read_checkpoint
from visiondistill.reporting.loader import load_task_module, run_data_settings

__all__ = ["PredictError", "PredictResult", "main", "predict_folder"]

DEFAULT_IMAGE_SIZE = 64


class PredictError(VisionDistillError, ValueError):
    """A prediction that cannot be made: no images, an unsupported task, a teacher that does not fit the student."""


@dataclass
class PredictResult:
    """What `predict_folder` wrote."""

    task: str
    out: Path
    images: int
    files: list[Path] = field(default_factory=list)
    image_size: int = DEFAULT_IMAGE_SIZE
    size_source: str = ""

    def summary(self) -> str:
        """One line: what was written where."""
        shown = sorted({p.relative_to(self.out).parts[0] + ("/" if p.parent != self.out else "") for p in self.files})
        return (
            f"predicted {self.images} image(s) with the {self.task} student at {self.image_size}×{self.image_size} px "
            f"(size from {self.size_source or 'the run'}): wrote {', '.join(shown)} in {self.out}"
        )


@dataclass
class _Prepared:
    """One image as the model sees it, and how to get back to the image's own pixels."""

    path: Path
    original: np.ndarray  # H×W×C float32 in [0, 1]
    display: np.ndarray  # S×S×C float32 in [0, 1]: the model's input before normalisation
    tensor: Tensor  # 1×C×S×S, normalised
    to_image: np.ndarray  # 2×3 affine map from input pixels to image pixels
    relative: str = ""  # the file below the image folder, as the JSON files name it
    name: str = ""  # the output files' stem: ``relative`` without suffix, ``/`` as ``__``


class _Images:
    """The images of a folder, checked from their headers up front and decoded one at a time as they are used."""

    def __init__(self, paths: list[Path], task: str, size: int, channels: int, window: tuple[float, float] | None):
        self.paths, self.arguments = paths, (task, size, channels, window)
        self.sizes = [check_image(path) for path in paths]  # (width, height); a bad file fails before any output
        root = Path(*_common_parts(paths)) if len(paths) > 1 else paths[0].parent
        self.relative = [path.relative_to(root).as_posix() for path in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[_Prepared]:
        for path, relative in zip(self.paths, self.relative, strict=True):
            item = _prepare(path, *self.arguments)
            item.relative, item.name = relative, relative.rsplit(".", 1)[0].replace("/", "__")
            yield item


def find_images(folder: str | Path) -> list[Path]:
    """The image files of a folder and its sub-folders (`IMAGE_EXTENSIONS`), sorted.

    Raises:
        MissingDataError: When the folder does not exist.
        PredictError: When it holds no image file.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise MissingDataError(f"Image folder '{folder}' does not exist; pass a folder of images to predict on.")
    images = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and p.name[0] != "."
    )
    if not images:
        raise PredictError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in '{folder}'; put the images to predict there.")
    return images


def _task_name(module: Any) -> str:
    names = [cls.__name__ for cls in type(module).__mro__]
    task = next((_TASKS[name] for name in names if name in _TASKS), None)
    if task is None:
        raise PredictError(
            f"visiondistill predict has no writer for the task module {type(module).__name__}; it supports "
            f"{', '.join(sorted(_TASKS))}"
        )
    return task


def _settings(
    path: Path, checkpoint: Mapping[str, Any], task: str, image_size: int | None, window: Sequence[float] | None
) -> tuple[int, tuple[float, float] | None, str]:
    """Input side, intensity window and where the side came from (for the summary)."""
    data, source = run_data_settings(path, checkpoint)
    if image_size is not None:
        source = "--image-size"
    else:
        recorded = data.get("input_size" if task == "keypoints" else "image_size")
        if isinstance(recorded, int) and not isinstance(recorded, bool):
            image_size = recorded
        else:
            image_size, source = DEFAULT_IMAGE_SIZE, "the default: the run records none, pass --image-size"
    if image_size < 8:
        raise PredictError(f"--image-size must be >= 8, got {image_size}")
    if task == "segmentation" and image_size % 32:
        raise PredictError(f"segmenters need an image size divisible by 32 (encoder depth 5), got {image_size}")
    window = check_window(window if window is not None else data.get("intensity_window"), "--intensity-window")
    return image_size, window, source


def _prepare(path: Path, task: str, size: int, channels: int, window: tuple[float, float] | None) -> _Prepared:
    """Reads an image and prepares it as the task's evaluation transform does (keypoints: one crop of it all)."""
    original = read_image(path, channels=channels, window=window)
    height, width = original.shape[:2]
    if task == "keypoints":
        # the whole image as the instance's box, warped as `KeypointCrops` warps an instance (without padding)
        matrix = crop_matrix([0.0, 0.0, float(width), float(height)], size, padding=1.0)
        display = cv2.warpAffine(original, pixel_centre_matrix(matrix), (size, size), flags=cv2.INTER_LINEAR)
        to_image = invert_affine(matrix)
    else:
        display = cv2.resize(original, (size, size), interpolation=cv2.INTER_AREA)
        to_image = np.array([[width / size, 0.0, 0.0], [0.0, height / size, 0.0]])
    display = display.reshape(size, size, channels)
    if task == "keypoints":  # `KeypointCrops`' evaluation pipeline after the warp: normalisation only
        mean, std = resolve_normalization(channels)
        tensor = torch.from_numpy((display - np.float32(mean)) / np.float32(std)).permute(2, 0, 1)
    else:  # the datamodules' own evaluation pipeline, so predict resizes and normalises exactly as they do
        tensor = augmentation_pipeline(size, train=False, in_channels=channels)(image=original)["image"]
    return _Prepared(path, original, display, tensor.unsqueeze(0).float().contiguous(), to_image)


# -- the tasks' writers: each gets the module, the prepared images and the output folder, returns the files written --


def _classification(module: Any, images: _Images, out: Path, top_k: int) -> list[Path]:
    names = list(module.class_names)
    k = min(top_k, len(names))
    path = out / "predictions.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", *[f"{kind}_{i}" for i in range(1, k + 1) for kind in ("class", "probability")]])
        for item in images:
            with torch.no_grad():
                probabilities = module.predict_step(item.tensor, 0)["probabilities"][0]
            values, indices = probabilities.topk(k)
            row = [str(item.path)]
            for value, index in zip(values.tolist(), indices.tolist(), strict=True):
                row += [names[index], f"{value:.6f}"]
            writer.writerow(row)
    return [path]


def _palette(count: int) -> np.ndarray:
    """Distinct colours per class (background black), ``count×3`` uint8."""
    from matplotlib import colormaps

    colours = (colormaps["tab20"](np.arange(count) % 20)[:, :3] * 255).round().astype(np.uint8)
    colours[0] = 0
    return colours


def _segmentation(module: Any, images: _Images, out: Path, top_k: int) -> list[Path]:
    written, palette = [], _palette(len(module.class_names))
    for item in images:
        height, width = item.original.shape[:2]
        with torch.no_grad():
            logits = module.student(item.tensor)
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        mask = logits.argmax(dim=1)[0].numpy()
        mask = mask.astype(np.uint8 if len(module.class_names) <= 256 else np.uint16)
        written.append(_save_array(mask, out / "masks" / f"{item.name}.png"))
        base = np.repeat(item.original, 3, axis=2) if item.original.shape[2] == 1 else item.original
        blended = np.where(mask[..., None] > 0, 0.5 * base + 0.5 * palette[mask] / 255.0, base)
        written.append(save_png((blended * 255).round().astype(np.uint8), out / "overlays" / f"{item.name}.png"))
    return written


def _detection(module: Any, images: _Images, out: Path, top_k: int) -> list[Path]:
    results = []
    for image_id, item in enumerate(images, start=1):
        height, width = item.original.shape[:2]
        with torch.no_grad():
            detections = module.predict_step(item.tensor, 0)[0]
        for box, score, label in zip(detections["boxes"], detections["scores"], detections["labels"], strict=True):
            corners = apply_affine(item.to_image, box.view(2, 2).numpy().astype(np.float64))
            x0, y0 = np.clip(corners[0], 0, [width, height])
            x1, y1 = np.clip(corners[1], 0, [width, height])
            results.append(
                {
                    "image_id": image_id,
                    "file_name": item.relative,
                    "category_id": int(label) + 1,
                    "category_name": module.class_names[int(label)],
                    "bbox": [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                    "score": round(float(score), 5),
                }
            )
    return [_save_json(results, out / "detections.json")]


def _keypoints(module: Any, images: _Images, out: Path, top_k: int) -> list[Path]:
    results = []
    for image_id, item in enumerate(images, start=1):
        with torch.no_grad():
            coords, scores = module.decode(module.predict_heatmaps(item.tensor))
        points = apply_affine(item.to_image, coords[0].numpy().astype(np.float64))
        flat = [round(float(v), 2) for x, y in points for v in (x, y, 1)]
        results.append(
            {
                "image_id": image_id,
                "file_name": item.relative,
                "category_id": 1,
                "keypoints": flat,
                "keypoint_scores": [round(float(s), 5) for s in scores[0]],
                "score": round(float(scores[0].mean()), 5),
            }
        )
    return [_save_json(results, out / "keypoints.json")]


_TASKS = {
    "ClassificationTask": "classification",
    "SegmentationTask": "segmentation",
    "DetectionTask": "detection",
    "KeypointTask": "keypoints",
}
_WRITERS: dict[str, Callable[[Any, list[_Prepared], Path, int], list[Path]]] = {
    "classification": _classification,
    "segmentation": _segmentation,
    "detection": _detection,
    "keypoints": _keypoints,
}


def _common_parts(paths: list[Path]) -> tuple[str, ...]:
    parts = [p.parent.parts for p in paths]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return tuple(common)


def _save_array(mask: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)
    return path


def _save_json(content: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1))
    return path


def _images_json(module: Any, task: str, images: _Images, out: Path) -> Path:
    entries = [
        {"id": i, "file_name": relative, "width": width, "height": height}
        for i, (relative, (width, height)) in enumerate(zip(images.relative, images.sizes, strict=True), start=1)
    ]
    if task == "keypoints":
        categories = [{"id": 1, "name": "instance", "keypoints": list(module.keypoint_names)}]
    else:
        categories = [{"id": i + 1, "name": name} for i, name in enumerate(module.class_names)]
    return _save_json({"images": entries, "categories": categories}, out / "images.json")


# -- explanations ----------------------------------------------------------------------------------------------------


def _explain(modules: Mapping[str, Any], images: _Images, out: Path) -> list[Path]:
    """Grad-CAM of each model's last feature stage, explaining the student's prediction; PNG + npz per image."""
    written, method = [], cam_method("gradcam")
    for item in images:
        maps: dict[str, np.ndarray] = {}
        explained = None
        for role, module in modules.items():
            adapter = saliency_adapter_for(module)
            network = module.student
            wrapped = adapter.cam_model(network).eval()
            predicted = adapter.predict(wrapped, item.tensor)
            explained = predicted if explained is None else explained  # the student's, for every model
            path, layer = resolve_layer(network, -1, role=role)
            targets = adapter.targets(explained, item.tensor)
            with torch.enable_grad():
                cam = compute_cams(
                    method, wrapped, [layer], item.tensor, targets, adapter.reshape_transform(network, [path])
                )
            network.zero_grad(set_to_none=True)
            maps[f"{role}_map"] = cam[0].numpy()
        name = item.name
        arrays = {
            **maps,
            "explained": np.asarray(explained.numpy()),
            "image": item.display,
            "source": np.array(str(item.path)),
        }
        written.append(out / "saliency" / f"{name}.npz")
        written[-1].parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(written[-1], **arrays)
        display = torch.from_numpy(item.display.transpose(2, 0, 1)).unsqueeze(0)
        panels = [overlay(display, torch.from_numpy(m)[None])[0] for m in maps.values()]
        picture = np.concatenate(
            [np.repeat(item.display, 3, axis=2) if item.display.shape[2] == 1 else item.display, *panels], axis=1
        )
        written.append(
            save_png((np.clip(picture, 0, 1) * 255).round().astype(np.uint8), out / "saliency" / f"{name}.png")
        )
    return written


# -- the command -----------------------------------------------------------------------------------------------------


def predict_folder(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    top_k: int = 5,
    explain: bool = False,
    teacher: str | Path | None = None,
    image_size: int | None = None,
    intensity_window: Sequence[float] | None = None,
) -> PredictResult:
    """Writes a student's predictions (and, with ``explain``, saliency maps) for every image of a folder.

    Args:
        checkpoint: A ``.ckpt`` written by ``visiondistill fit``.
        images: A folder of images (searched recursively).
        out: Output folder (created; files of the same names are replaced).
        top_k: Classes per image in the classification CSV.
        explain: Also write Grad-CAM maps (PNG + npz) per image.
        teacher: A teacher's checkpoint (its own run's ``best.ckpt``), explained beside the student; never loaded
            otherwise.
        image_size: Input side; default the run's ``data.image_size`` (``input_size`` for keypoints), else 64.
        intensity_window: ``[low, high]`` for the images; default the run's ``data.intensity_window``, if any.

    Returns:
        What was written.

    Raises:
        CheckpointError: When a checkpoint is missing, unreadable or not a visiondistill checkpoint.
        MissingDataError: When the image folder does not exist.
        PredictError: For an empty folder, an unsupported task, a bad option or a teacher of another task.
        DataError: For an image that cannot be read (`CorruptImageError`, `UnsupportedImageError`), named.
    """
    if top_k < 1:
        raise PredictError(f"--top-k must be >= 1, got {top_k}")
    checkpoint = Path(checkpoint).expanduser()
    for path in (checkpoint, teacher):
        if path is not None and not Path(path).expanduser().is_file():
            raise CheckpointError(
                f"checkpoint '{path}' does not exist; pass a .ckpt written by `visiondistill fit` (e.g. "
                "runs/<task>/<run>/checkpoints/best.ckpt)"
            )
    files = find_images(images)
    module = load_task_module(checkpoint)
    task = _task_name(module)
    size, window, size_source = _settings(checkpoint, read_checkpoint(checkpoint), task, image_size, intensity_window)
    channels = _channels(module)
    modules = {"student": module}
    if teacher is not None:
        teacher_module = load_task_module(teacher)
        if _task_name(teacher_module) != task or _channels(teacher_module) != channels:
            kind, count = _task_name(teacher_module), _channels(teacher_module)
            raise PredictError(
                f"teacher checkpoint '{teacher}' is a {kind} model of {count} input channel(s), but the student is a "
                f"{task} model of {channels}; pass the teacher of this student"
            )
        modules["teacher"] = teacher_module
    prepared = _Images(files, task, size, channels, window)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    written = _WRITERS[task](module, prepared, out, top_k)
    written.append(_images_json(module, task, prepared, out))
    if explain:
        written += _explain(modules, prepared, out)
    return PredictResult(task, out, len(prepared), written, size, size_source)


def _channels(module: Any) -> int:
    student = module.hparams["student"]
    return int(student.get("in_channels", student.get("in_chans", 3)))


def build_parser() -> argparse.ArgumentParser:
    """The ``visiondistill predict`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="visiondistill predict",
        description="Predict with the student of a visiondistill checkpoint on a folder of your own images "
        "(replaces LightningCLI's `predict`, which needs a datamodule).",
    )
    parser.add_argument("checkpoint", help="a .ckpt written by `visiondistill fit` (the student's run)")
    parser.add_argument("images", help="a folder of images (PNG, JPEG, BMP, TIFF, DICOM; any size and bit depth)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--top-k", type=int, default=5, help="classes per image in predictions.csv (default 5)")
    parser.add_argument("--explain", action="store_true", help="also write Grad-CAM maps (saliency/*.png, *.npz)")
    parser.add_argument("--teacher", help="a teacher checkpoint to explain beside the student (with --explain)")
    parser.add_argument("--image-size", type=int, help="input side (default: the run's data.image_size, else 64)")
    parser.add_argument(
        "--intensity-window", type=float, nargs=2, metavar=("LOW", "HIGH"), help="map [LOW, HIGH] to [0, 1]"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``visiondistill predict``; prints one line saying what was written where.

    Returns:
        0 on success, 1 when the prediction fails (the reason is printed to stderr), 2 on bad arguments.
    """
    args = build_parser().parse_args(argv)
    try:
        result = predict_folder(
            args.checkpoint,
            args.images,
            args.out,
            top_k=args.top_k,
            explain=args.explain,
            teacher=args.teacher,
            image_size=args.image_size,
            intensity_window=args.intensity_window,
        )
    except VisionDistillError as error:
        print(f"visiondistill predict: {error}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0
