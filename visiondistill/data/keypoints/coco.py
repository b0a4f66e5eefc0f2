"""The COCO keypoint reader: instances of a COCO JSON file, checked, with the rules for imperfect annotations.

Rules (each one tested):

- a keypoint labelled ``v > 0`` whose ``(x, y)`` lies outside its image is marked invisible (``v = 0``) and counted
  (`CocoKeypointsFile.outside_image`);
- an annotation with another number of keypoints than the data set's ``K`` is an error naming the annotation id;
- an annotation of ``2·K`` values (``x, y`` pairs without visibility flags) is an error naming the annotation id;
- visibility flags other than 0, 1 and 2 are an error naming the annotation id.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visiondistill.data.errors import DataError, MissingDataError

__all__ = ["CocoKeypointsFile", "KeypointConverter", "KeypointInstance", "read_coco_keypoints"]


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
    path: Path | None = None  # the JSON file read (named in messages about its images)


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
    result = CocoKeypointsFile([], num_keypoints, names, path=path)
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
