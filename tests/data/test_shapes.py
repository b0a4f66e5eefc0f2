"""Tests of the synthetic shapes generator and the data-set writers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from visiondistill.data import (
    MAX_KEYPOINTS,
    SHAPE_CLASSES,
    DataError,
    ShapesGenerator,
    write_shapes_dataset,
)
from visiondistill.data.synthesize import main, split_seed

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

SIZE = 32


@pytest.fixture(scope="module")
def samples():
    generator = ShapesGenerator(image_size=SIZE, max_objects=4)
    return [generator.sample(index, seed=3) for index in range(40)]


def test_same_seed_and_index_give_identical_bytes():
    generator = ShapesGenerator(image_size=SIZE)
    first, again = generator.sample(7, seed=11), ShapesGenerator(image_size=SIZE).sample(7, seed=11)
    assert first.image.tobytes() == again.image.tobytes()
    assert first.label == again.label
    assert [o.category_id for o in first.objects] == [o.category_id for o in again.objects]
    for a, b in zip(first.objects, again.objects, strict=True):
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.keypoints, b.keypoints)


def test_sample_does_not_depend_on_generation_order():
    generator = ShapesGenerator(image_size=SIZE)
    forward = [generator.sample(i, seed=0).image for i in range(3)]
    backward = [generator.sample(i, seed=0).image for i in reversed(range(3))][::-1]
    assert all((a == b).all() for a, b in zip(forward, backward, strict=True))


def test_different_seed_or_index_gives_different_images():
    generator = ShapesGenerator(image_size=SIZE)
    reference = generator.sample(0, seed=0).image
    assert not np.array_equal(reference, generator.sample(0, seed=1).image)
    assert not np.array_equal(reference, generator.sample(1, seed=0).image)


def test_image_and_annotation_types(samples):
    for sample in samples:
        assert sample.image.shape == (SIZE, SIZE, 3) and sample.image.dtype == np.uint8
        assert sample.objects
        for obj in sample.objects:
            assert 0 <= obj.category_id < len(SHAPE_CLASSES)
            assert obj.bbox.shape == (4,) and obj.bbox.dtype == np.float32
            assert obj.mask.shape == (SIZE, SIZE) and obj.mask.dtype == bool
            assert obj.keypoints.shape == (MAX_KEYPOINTS, 3)


def test_boxes_contain_their_masks_and_visible_keypoints(samples):
    for sample in samples:
        for obj in sample.objects:
            x0, y0, x1, y1 = obj.bbox
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
            rows, cols = np.nonzero(obj.mask)
            assert rows.size > 0
            assert cols.min() >= x0 and cols.max() + 1 <= x1 and rows.min() >= y0 and rows.max() + 1 <= y1
            for x, y, v in obj.keypoints:
                assert v in (0, 1, 2)
                if v == 2:
                    assert x0 <= x <= x1 and y0 <= y <= y1
                if v > 0:
                    assert 0 <= x < SIZE and 0 <= y < SIZE


def test_keypoint_slots_match_the_class(samples):
    slots = {"circle": 4, "square": 4, "triangle": 3, "star": 5, "hexagon": 6, "cross": 8}
    for sample in samples:
        obj = max(sample.objects, key=lambda o: o.area)  # the main object lies inside the image
        used = int((obj.keypoints[:, 2] > 0).sum())
        assert used == slots[SHAPE_CLASSES[obj.category_id]]
        assert (obj.keypoints[used:, 2] == 0).all()


def test_label_is_the_largest_visible_object_and_masks_do_not_overlap(samples):
    for sample in samples:
        areas = [o.area for o in sample.objects]
        main = int(np.argmax(areas))
        assert sample.label == sample.objects[main].category_id
        others = [a for i, a in enumerate(areas) if i != main]
        assert all(a < 0.75 * areas[main] for a in others)  # distractors are clearly smaller
        stacked = np.stack([o.mask for o in sample.objects]).sum(axis=0)
        assert stacked.max() <= 1


def test_grayscale_class_subset_and_difficulty_zero():
    generator = ShapesGenerator(image_size=SIZE, grayscale=True, classes=("star", "cross"), difficulty=0.0)
    for index in range(5):
        sample = generator.sample(index, seed=0)
        assert (sample.image[..., 0] == sample.image[..., 1]).all()
        assert (sample.image[..., 1] == sample.image[..., 2]).all()
        assert all(o.category_id in (0, 1) for o in sample.objects)


@pytest.mark.parametrize(
    "kwargs", [{"image_size": 4}, {"min_objects": 0}, {"min_objects": 3, "max_objects": 2}, {"classes": ("blob",)}]
)
def test_bad_generator_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        ShapesGenerator(**kwargs)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, splits={"train": 24, "val": 12, "test": 0}, image_size=SIZE, seed=5)
    return root


def test_meta_records_the_request(written):
    meta = json.loads((written / "meta.json").read_text())
    assert meta["generator"]["image_size"] == SIZE and meta["seed"] == 5
    assert meta["splits"] == {"train": 24, "val": 12}  # an empty split is skipped
    assert meta["class_names"] == list(SHAPE_CLASSES)
    assert set(meta["tasks"]) == {"classification", "detection", "segmentation", "keypoints"}
    assert sum(meta["class_counts"]["train"].values()) == 24
    assert not list(written.glob(".partial-*"))


def test_splits_use_different_seeds():
    assert split_seed(0, "train") != split_seed(0, "val")
    assert split_seed(0, "train") != split_seed(1, "train")


def test_classification_is_a_valid_image_folder(written):
    for split, count in (("train", 24), ("val", 12)):
        folders = sorted(p.name for p in (written / "classification" / split).iterdir())
        assert folders == sorted(SHAPE_CLASSES)
        files = list((written / "classification" / split).glob("*/*.png"))
        assert len(files) == count
    with Image.open(files[0]) as image:
        assert image.size == (SIZE, SIZE) and image.mode == "RGB"


def test_coco_json_loads_and_matches_the_generator(written):
    coco = COCO(str(written / "coco" / "annotations" / "instances_train.json"))
    assert sorted(coco.getCatIds()) == list(range(1, len(SHAPE_CLASSES) + 1))
    assert len(coco.getImgIds()) == 24
    assert coco.loadCats(1)[0]["name"] == SHAPE_CLASSES[0]
    assert len(coco.loadCats(1)[0]["keypoints"]) == MAX_KEYPOINTS
    generator = ShapesGenerator(image_size=SIZE)
    for image_info in coco.loadImgs(coco.getImgIds()[:6]):
        assert (written / "coco" / "images" / "train" / image_info["file_name"]).is_file()
        sample = generator.sample(image_info["id"] - 1, split_seed(5, "train"))
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_info["id"]))
        assert len(annotations) == len(sample.objects)
        for ann, obj in zip(annotations, sample.objects, strict=True):
            assert ann["category_id"] == obj.category_id + 1 and ann["iscrowd"] == 0
            x, y, w, h = ann["bbox"]
            np.testing.assert_allclose([x, y, x + w, y + h], obj.bbox, atol=1e-3)
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), obj.mask)
            assert ann["area"] == obj.area == mask_utils.area(ann["segmentation"])
            assert len(ann["keypoints"]) == 3 * MAX_KEYPOINTS
            assert ann["num_keypoints"] == int((obj.keypoints[:, 2] > 0).sum())


def test_segmentation_masks_hold_class_indices(written):
    generator = ShapesGenerator(image_size=SIZE)
    masks = sorted((written / "segmentation" / "val" / "masks").glob("*.png"))
    assert len(masks) == 12 and len(list((written / "segmentation" / "val" / "images").glob("*.png"))) == 12
    for index, path in enumerate(masks[:4]):
        with Image.open(path) as image:
            assert image.mode == "L"
            classes = np.asarray(image)
        assert classes.max() <= len(SHAPE_CLASSES)
        sample = generator.sample(index, split_seed(5, "val"))
        for obj in sample.objects:
            assert (classes[obj.mask] == obj.category_id + 1).all()
        assert (classes[~np.any([o.mask for o in sample.objects], axis=0)] == 0).all()


def test_existing_dataset_is_reused_extended_or_refused(tmp_path):
    splits = {"train": 6, "val": 6}
    root = write_shapes_dataset(tmp_path, tasks=("classification",), splits=splits, image_size=SIZE)
    stamp = (root / "meta.json").stat().st_mtime_ns
    write_shapes_dataset(tmp_path, tasks=("classification",), splits=splits, image_size=SIZE)
    assert (root / "meta.json").stat().st_mtime_ns == stamp  # nothing rewritten

    write_shapes_dataset(tmp_path, tasks=("segmentation",), splits=splits, image_size=SIZE)
    meta = json.loads((root / "meta.json").read_text())
    assert meta["tasks"] == ["classification", "segmentation"]
    with Image.open(root / "segmentation" / "train" / "images" / "00003.png") as image:
        segmentation_image = np.asarray(image)
    classification_image = next((root / "classification" / "train").glob("*/00003.png"))
    with Image.open(classification_image) as image:
        np.testing.assert_array_equal(np.asarray(image), segmentation_image)  # same samples in every task

    with pytest.raises(DataError, match=r"image_size: on disk 32, requested 40"):
        write_shapes_dataset(tmp_path, tasks=("classification",), splits=splits, image_size=40)
    write_shapes_dataset(tmp_path, tasks=("classification",), splits=splits, image_size=40, overwrite=True)
    meta = json.loads((root / "meta.json").read_text())
    assert meta["generator"]["image_size"] == 40 and meta["tasks"] == ["classification"]
    assert not (root / "segmentation").exists()


def test_data_from_another_generator_version_is_refused(tmp_path):
    splits = {"train": 2}
    write_shapes_dataset(tmp_path, tasks=("classification",), splits=splits, image_size=SIZE)
    meta = json.loads((tmp_path / "meta.json").read_text())
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "generator_version": 0}))
    with pytest.raises(DataError, match="generator_version: on disk 0"):
        write_shapes_dataset(tmp_path, tasks=("classification",), splits=splits, image_size=SIZE)


def test_grayscale_dataset_writes_single_channel_images(tmp_path):
    write_shapes_dataset(tmp_path, tasks=("classification",), splits={"train": 3}, image_size=SIZE, grayscale=True)
    with Image.open(next((tmp_path / "classification" / "train").glob("*/*.png"))) as image:
        assert image.mode == "L"


def test_synth_command_writes_and_reports(tmp_path, capsys):
    out = tmp_path / "synth"
    argv = ["--out", str(out), "--image-size", "24", "--num-train", "4", "--num-val", "2", "--num-test", "2"]
    assert main([*argv, "--tasks", "classification", "detection"]) == 0
    assert "Wrote the shapes data set" in capsys.readouterr().out
    assert (out / "coco" / "annotations" / "instances_test.json").is_file()
    assert main([*argv, "--tasks", "classification"]) == 0
    assert "already up to date" in capsys.readouterr().out
    assert main([*argv, "--seed", "1"]) == 1
    assert "seed: on disk 0, requested 1" in capsys.readouterr().err
