"""Write the synthetic shapes data set to disk in standard formats, and the ``visiondistill synth`` command.

Layout under ``root`` (each task group is written only when one of its tasks is requested)::

    root/meta.json                                         generator parameters, seed, splits, class counts
    root/classification/<split>/<class_name>/00000.png     ImageFolder                 (task "classification")
    root/coco/images/<split>/00000.png                     COCO images                 (tasks "detection", "keypoints")
    root/coco/annotations/instances_<split>.json           boxes, RLE masks, keypoints; category ids start at 1
    root/segmentation/<split>/images/00000.png             images                      (task "segmentation")
    root/segmentation/<split>/masks/00000.png              uint8 class map: 0 = background, shape class i -> i + 1

Every task sees the same images (sample ``i`` of a split is generated once and written to each group), so a run on
one task can be compared with a run on another. Asking again for a data set that is already on disk with the same
parameters writes only the missing task groups; asking with different parameters raises unless ``overwrite``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from visiondistill.core.errors import ConfigError
from visiondistill.data.errors import DataError
from visiondistill.data.shapes import GENERATOR_VERSION, KEYPOINT_NAMES, ShapesGenerator, ShapesSample

__all__ = [
    "DEFAULT_SPLITS",
    "META_FILENAME",
    "TASKS",
    "main",
    "meta_differences",
    "read_meta",
    "split_seed",
    "write_shapes_dataset",
]

TASKS: tuple[str, ...] = ("classification", "detection", "segmentation", "keypoints")
DEFAULT_SPLITS: dict[str, int] = {"train": 3000, "val": 500, "test": 500}
META_FILENAME = "meta.json"
_FORMAT = "visiondistill-shapes"
_FORMAT_VERSION = 1
_GROUP_OF_TASK = {
    "classification": "classification",
    "detection": "coco",
    "keypoints": "coco",
    "segmentation": "segmentation",
}
_GROUPS = ("classification", "coco", "segmentation")
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def split_seed(seed: int, split: str) -> int:
    """Derive the generator seed of one split, so splits never share samples.

    Args:
        seed: The data-set seed.
        split: The split name, e.g. ``"train"``.

    Returns:
        A 32-bit seed that depends on both arguments (stable across Python runs, unlike ``hash``).
    """
    return int(np.random.SeedSequence([int(seed), zlib.crc32(split.encode())]).generate_state(1)[0])


def read_meta(root: str | Path) -> dict[str, Any] | None:
    """Read ``root/meta.json``.

    Args:
        root: Data-set root folder.

    Returns:
        The metadata, or ``None`` when the file does not exist.

    Raises:
        DataError: When the file exists but is not valid JSON.
    """
    path = Path(root) / META_FILENAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"Cannot read '{path}' ({err}); delete the folder '{root}' and generate it again.") from err


def meta_differences(meta: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """List the parameters in which a data set on disk differs from a request.

    Args:
        meta: The content of ``meta.json``.
        expected: Requested values, any of ``image_size``, ``min_objects``, ``max_objects``, ``difficulty``,
            ``grayscale``, ``classes`` (generator parameters), ``seed`` and ``splits``. The format and generator
            versions are always compared.

    Returns:
        One ``"name: on disk X, requested Y"`` line per differing parameter (empty when they agree).
    """
    on_disk = {**meta.get("generator", {}), "seed": meta.get("seed"), "splits": meta.get("splits")}
    differences = []
    if meta.get("format") != _FORMAT or meta.get("version") != _FORMAT_VERSION:
        differences.append(
            f"format: on disk {meta.get('format')!r} v{meta.get('version')}, expected {_FORMAT!r} v{_FORMAT_VERSION}"
        )
    if meta.get("generator_version") != GENERATOR_VERSION:
        differences.append(
            f"generator_version: on disk {meta.get('generator_version')!r}, this code generates {GENERATOR_VERSION} "
            "(the images would differ)"
        )
    for key, want in expected.items():
        have = on_disk.get(key)
        if isinstance(want, tuple):
            want = list(want)
        if isinstance(want, Mapping):
            want = dict(want)
        if have != want:
            differences.append(f"{key}: on disk {have!r}, requested {want!r}")
    return differences


def write_shapes_dataset(
    root: str | Path,
    tasks: Sequence[str] = TASKS,
    splits: Mapping[str, int] | None = None,
    image_size: int = 64,
    seed: int = 0,
    grayscale: bool = False,
    difficulty: float = 1.0,
    overwrite: bool = False,
    *,
    min_objects: int = 1,
    max_objects: int = 3,
    verbose: bool = False,
) -> Path:
    """Generate the shapes data set and write it in standard formats (see the module docstring for the layout).

    Task groups are written to a temporary folder inside ``root`` and moved into place when complete, and
    ``meta.json`` is written last, so an interrupted run never leaves a folder that looks complete.

    Args:
        root: Output folder (created if needed).
        tasks: Any of ``"classification"``, ``"detection"``, ``"segmentation"``, ``"keypoints"``.
        splits: Images per split, default ``{"train": 3000, "val": 500, "test": 500}``; splits with 0 images are
            skipped. Each split has its own seed derived from ``seed`` and its name.
        image_size: Image height and width in pixels.
        seed: Data-set seed.
        grayscale: Write single-channel (mode ``L``) images.
        difficulty: Generator difficulty, see :class:`~visiondistill.data.shapes.ShapesGenerator`.
        overwrite: Replace an existing data set generated with other parameters (only the folders this function
            writes and ``meta.json`` are removed).
        min_objects: Fewest shapes per image.
        max_objects: Most shapes per image.
        verbose: Print progress per split.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: For unknown tasks, bad split names or counts, or bad generator arguments.
        DataError: When ``root`` holds a data set with other parameters, or an incomplete one, and ``overwrite`` is
            false; the message lists the differing values.
    """
    root = Path(root)
    tasks = tuple(dict.fromkeys(tasks))
    unknown = [t for t in tasks if t not in TASKS]
    if not tasks or unknown:
        raise ConfigError(f"tasks must be a non-empty subset of {TASKS}, got {tasks!r}")
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    for name, count in splits.items():
        if not _SPLIT_NAME.match(str(name)):
            raise ConfigError(f"split names may hold only letters, digits, '-' and '_', got {name!r}")
        if int(count) < 0:
            raise ConfigError(f"split {name!r} has a negative image count {count!r}")
    splits = {name: int(count) for name, count in splits.items() if int(count) > 0}
    if not splits:
        raise ConfigError(f"at least one split needs images, got {splits!r}")
    generator = ShapesGenerator(
        image_size=image_size,
        min_objects=min_objects,
        max_objects=max_objects,
        difficulty=difficulty,
        grayscale=grayscale,
    )
    request = _request(generator, seed, splits)
    groups = [g for g in _GROUPS if any(_GROUP_OF_TASK[t] == g for t in tasks)]

    meta = read_meta(root)
    differences = meta_differences(meta, request) if meta is not None else None
    if meta is not None and not differences:
        # the same data set: write only the groups it lacks (all requested ones when overwriting)
        done_groups = {_GROUP_OF_TASK[t] for t in meta.get("tasks", []) if t in _GROUP_OF_TASK}
        to_write = groups if overwrite else [g for g in groups if g not in done_groups]
        if not to_write:
            return root
        kept_tasks = set(meta.get("tasks", []))
        stale = to_write
    else:
        present = [g for g in _GROUPS if (root / g).exists()]
        if not overwrite and (meta is not None or present):
            detail = "; ".join(differences) if differences else f"{present} exist but '{META_FILENAME}' is missing"
            raise DataError(
                f"The shapes data set at '{root}' does not match the request ({detail}). Use another data folder "
                f"(data_dir / --out), delete '{root}', or regenerate it with overwrite=True (--overwrite)."
            )
        to_write, kept_tasks, stale = groups, set(), list(_GROUPS)
        if meta is not None:
            (root / META_FILENAME).unlink()
    for group in stale:
        shutil.rmtree(root / group, ignore_errors=True)

    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        class_counts = _write_groups(generator, staging, to_write, splits, seed, verbose)
        for group in to_write:
            os.replace(staging / group, root / group)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    written_tasks = kept_tasks | {t for t in TASKS if _GROUP_OF_TASK[t] in to_write}
    _write_json_atomic(
        root / META_FILENAME,
        {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "generator_version": GENERATOR_VERSION,
            "generator": generator.config(),
            "seed": int(seed),
            "splits": splits,
            "split_seeds": {name: split_seed(seed, name) for name in splits},
            "tasks": [t for t in TASKS if t in written_tasks],
            "class_names": list(generator.classes),
            "keypoint_names": list(KEYPOINT_NAMES),
            "class_counts": class_counts,
            "layout": {
                "classification": "classification/<split>/<class_name>/<index>.png",
                "coco": "coco/images/<split>/<index>.png + coco/annotations/instances_<split>.json",
                "segmentation": "segmentation/<split>/{images,masks}/<index>.png",
            },
        },
    )
    return root


def _request(generator: ShapesGenerator, seed: int, splits: Mapping[str, int]) -> dict[str, Any]:
    return {**generator.config(), "seed": int(seed), "splits": dict(splits)}


def _write_groups(
    generator: ShapesGenerator,
    out: Path,
    groups: Iterable[str],
    splits: Mapping[str, int],
    seed: int,
    verbose: bool,
) -> dict[str, dict[str, int]]:
    """Generate every split once and write each sample to every requested group; return label counts per split."""
    groups = set(groups)
    names = generator.classes
    class_counts: dict[str, dict[str, int]] = {}
    for split, count in splits.items():
        start = time.perf_counter()
        seed_of_split = split_seed(seed, split)
        digits = max(5, len(str(count - 1)))
        if "classification" in groups:
            for name in names:
                (out / "classification" / split / name).mkdir(parents=True)
        if "coco" in groups:
            (out / "coco" / "images" / split).mkdir(parents=True)
            (out / "coco" / "annotations").mkdir(parents=True, exist_ok=True)
            coco = _CocoWriter(names, generator.image_size)
        if "segmentation" in groups:
            (out / "segmentation" / split / "images").mkdir(parents=True)
            (out / "segmentation" / split / "masks").mkdir(parents=True)
        counts = dict.fromkeys(names, 0)
        for index in range(count):
            sample = generator.sample(index, seed_of_split)
            file_name = f"{index:0{digits}d}.png"
            image = Image.fromarray(sample.image[..., 0] if generator.grayscale else sample.image)
            counts[names[sample.label]] += 1
            if "classification" in groups:
                _save_png(image, out / "classification" / split / names[sample.label] / file_name)
            if "coco" in groups:
                _save_png(image, out / "coco" / "images" / split / file_name)
                coco.add(index + 1, file_name, sample)
            if "segmentation" in groups:
                _save_png(image, out / "segmentation" / split / "images" / file_name)
                _save_png(Image.fromarray(_class_map(sample)), out / "segmentation" / split / "masks" / file_name)
        if "coco" in groups:
            _write_json_atomic(out / "coco" / "annotations" / f"instances_{split}.json", coco.to_dict(split))
        class_counts[split] = counts
        if verbose:
            print(f"  {split}: {count} images in {time.perf_counter() - start:.1f} s", flush=True)
    return class_counts


def _save_png(image: Image.Image, path: Path) -> None:
    # level 1 compresses these small images almost as well as the default and several times faster
    image.save(path, format="PNG", compress_level=1)


def _class_map(sample: ShapesSample) -> np.ndarray:
    """Semantic mask: 0 background, ``category_id + 1`` on each object's visible pixels."""
    height, width = sample.image.shape[:2]
    classes = np.zeros((height, width), dtype=np.uint8)
    for obj in sample.objects:
        classes[obj.mask] = obj.category_id + 1
    return classes


class _CocoWriter:
    """Accumulates the COCO ``images`` and ``annotations`` lists of one split."""

    def __init__(self, class_names: Sequence[str], image_size: int) -> None:
        self.class_names = list(class_names)
        self.image_size = image_size
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add(self, image_id: int, file_name: str, sample: ShapesSample) -> None:
        height, width = sample.image.shape[:2]
        self.images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for obj in sample.objects:
            x0, y0, x1, y1 = (float(v) for v in obj.bbox)
            rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
            keypoints = obj.keypoints.copy()
            keypoints[keypoints[:, 2] == 0, :2] = 0.0
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj.category_id + 1,
                    "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)],
                    "area": float(obj.area),
                    "iscrowd": 0,
                    "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                    "keypoints": [
                        round(float(v), 3) if i % 3 != 2 else int(v) for i, v in enumerate(keypoints.ravel())
                    ],
                    "num_keypoints": int((keypoints[:, 2] > 0).sum()),
                }
            )

    def to_dict(self, split: str) -> dict[str, Any]:
        return {
            "info": {
                "description": f"visiondistill synthetic shapes, split {split!r}",
                "version": str(_FORMAT_VERSION),
            },
            "licenses": [],
            "images": self.images,
            "annotations": self.annotations,
            "categories": [
                {"id": i + 1, "name": name, "supercategory": "shape", "keypoints": list(KEYPOINT_NAMES), "skeleton": []}
                for i, name in enumerate(self.class_names)
            ],
        }


def _write_json_atomic(path: Path, content: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=1 if path.name == META_FILENAME else None))
    os.replace(tmp, path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visiondistill synth",
        description="Generate the synthetic shapes data set (ImageFolder, COCO and segmentation masks).",
    )
    parser.add_argument("--out", default="data/shapes", help="output folder (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=64, help="image height and width (default: %(default)s)")
    parser.add_argument("--num-train", type=int, default=DEFAULT_SPLITS["train"], help="default: %(default)s")
    parser.add_argument("--num-val", type=int, default=DEFAULT_SPLITS["val"], help="default: %(default)s")
    parser.add_argument("--num-test", type=int, default=DEFAULT_SPLITS["test"], help="0 skips the split")
    parser.add_argument("--seed", type=int, default=0, help="data-set seed (default: %(default)s)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="default: all")
    parser.add_argument("--difficulty", type=float, default=1.0, help="0 = clean, 1 = benchmark (default)")
    parser.add_argument("--min-objects", type=int, default=1, help="default: %(default)s")
    parser.add_argument("--max-objects", type=int, default=3, help="default: %(default)s")
    parser.add_argument("--grayscale", action="store_true", help="write single-channel images")
    parser.add_argument("--overwrite", action="store_true", help="replace a data set made with other parameters")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``visiondistill synth``: write the shapes data set and print what was written.

    Args:
        argv: Arguments after ``synth``; ``None`` reads ``sys.argv[1:]``.

    Returns:
        0 on success, 1 when the data set on disk conflicts with the request or the arguments are invalid.
    """
    args = _parser().parse_args(argv)
    out = Path(args.out)
    splits = {"train": args.num_train, "val": args.num_val, "test": args.num_test}
    before = read_meta(out) if (out / META_FILENAME).is_file() else None
    start = time.perf_counter()
    try:
        write_shapes_dataset(
            out,
            tasks=args.tasks,
            splits=splits,
            image_size=args.image_size,
            seed=args.seed,
            grayscale=args.grayscale,
            difficulty=args.difficulty,
            overwrite=args.overwrite,
            min_objects=args.min_objects,
            max_objects=args.max_objects,
            verbose=True,
        )
    except (DataError, ValueError) as err:
        print(f"visiondistill synth: error: {err}", file=sys.stderr)
        return 1
    meta = read_meta(out) or {}
    elapsed = time.perf_counter() - start
    if before == meta:
        print(f"{out}: already up to date ({', '.join(meta.get('tasks', []))}); nothing written")
        return 0
    print(f"Wrote the shapes data set to {out} in {elapsed:.1f} s (seed {args.seed}, {args.image_size} px)")
    for split, counts in meta.get("class_counts", {}).items():
        print(f"  {split}: {sum(counts.values())} images, per class {counts}")
    groups = {_GROUP_OF_TASK[t] for t in meta.get("tasks", [])}
    if "classification" in groups:
        print(f"  classification (ImageFolder): {out / 'classification' / '<split>' / '<class>'}")
    if "coco" in groups:
        print(f"  detection + keypoints (COCO): {out / 'coco' / 'annotations' / 'instances_<split>.json'}")
    if "segmentation" in groups:
        print(f"  segmentation (PNG masks, 0 = background): {out / 'segmentation' / '<split>' / 'masks'}")
    return 0
