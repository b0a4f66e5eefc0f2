"""`visiondistill predict CKPT IMAGES --out DIR`: each task's standard output on non-square images of any depth.

The checkpoints are written by hand from untrained tiny task modules (as in the export tests): what is checked is the
files' form and coordinates, not the models' accuracy.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visiondistill.cli import main
from visiondistill.models import ClassifierSpec
from visiondistill.reporting import predict as predict_module
from visiondistill.tasks import ClassificationTask, DetectionTask, KeypointTask, SegmentationTask

from ..support import detection, keypoints, segmentation
from ..support.images import ramp16, write_png16

#: Image sizes (height, width): non-square, one larger and one smaller than the model's input.
SIZES = ((48, 80), (30, 20))


def save_checkpoint(task: torch.nn.Module, path: Path, data: dict | None = None) -> Path:
    hparams = {**dict(task.hparams), "_class_path": f"visiondistill.tasks.{type(task).__name__}"}
    # as `DistillationTask.on_save_checkpoint` does: a student checkpoint holds no teacher weights
    weights = {key: value for key, value in task.state_dict().items() if not key.startswith("teacher.")}
    torch.save({"hyper_parameters": hparams, "state_dict": weights, "datamodule_hyper_parameters": data}, path)
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Two non-square images: an 8-bit RGB PNG and, in a sub-folder, a 16-bit grayscale PNG."""
    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    (folder / "more").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (*SIZES[0], 3), dtype=np.uint8)).save(folder / "photo.png")
    write_png16(folder / "more" / "scan.png", ramp16(*SIZES[1]))
    (folder / "notes.txt").write_text("not an image")  # other files are left alone
    return folder


def run(argv: list[str], capsys) -> str:
    assert main(["predict", *argv]) == 0
    return capsys.readouterr().out


def test_classification_writes_top_k_classes_and_probabilities(tmp_path, image_folder, capsys):
    torch.manual_seed(0)
    names = ["circle", "square", "star", "cross"]
    task = ClassificationTask(student=ClassifierSpec(name="test_resnet"), num_classes=4, class_names=names)
    checkpoint = save_checkpoint(task, tmp_path / "student.ckpt", {"image_size": 32})
    printed = run([str(checkpoint), str(image_folder), "--out", str(tmp_path / "out"), "--top-k", "3"], capsys)
    assert "predictions.csv" in printed and str(tmp_path / "out") in printed and "2 image(s)" in printed
    with (tmp_path / "out" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(row["file"]).name for row in rows] == ["scan.png", "photo.png"]  # sorted paths: more/ first
    for row in rows:
        classes = [row[f"class_{i}"] for i in (1, 2, 3)]
        probabilities = [float(row[f"probability_{i}"]) for i in (1, 2, 3)]
        assert len(set(classes)) == 3 and set(classes) <= set(names)
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-5
    # the same probabilities as the student on the datamodule's evaluation transform
    from visiondistill.data.images import read_image
    from visiondistill.data.transforms import classification_transforms

    image = read_image(image_folder / "photo.png", channels=3)
    task.eval()
    with torch.no_grad():
        expected = task.student(classification_transforms(32, train=False)(image=image)["image"][None]).softmax(-1)
    assert float(rows[1]["probability_1"]) == pytest.approx(float(expected.max()), abs=1e-5)
    assert rows[1]["class_1"] == names[int(expected.argmax())]


def test_segmentation_writes_masks_at_the_image_size_and_overlays(tmp_path, image_folder, capsys):
    torch.manual_seed(0)
    task = SegmentationTask(student=segmentation.TINY_STUDENT, num_classes=3)
    # a datamodule that records no hyper-parameters: the size comes from the run's config.yaml
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("data:\n  class_path: X\n  init_args:\n    image_size: 32\n")
    checkpoint = save_checkpoint(task, tmp_path / "run" / "checkpoints" / "best.ckpt")
    printed = run([str(checkpoint), str(image_folder), "--out", str(tmp_path / "out")], capsys)
    assert "32×32 px (size from " in printed and "config.yaml" in printed
    for name, (height, width) in (("photo", SIZES[0]), ("more__scan", SIZES[1])):
        mask = np.asarray(Image.open(tmp_path / "out" / "masks" / f"{name}.png"))
        assert mask.shape == (height, width) and mask.max() < 3
        with Image.open(tmp_path / "out" / "overlays" / f"{name}.png") as overlay:
            assert overlay.size == (width, height) and overlay.mode == "RGB"


def test_detection_writes_coco_results_inside_the_image(tmp_path, image_folder, capsys):
    torch.manual_seed(0)
    spec = detection.TINY_STUDENT
    task = DetectionTask(student=spec, num_classes=2, class_names=["bright", "dark"])
    for parameter in task.parameters():  # an untrained FCOS scores below its threshold: make it detect something
        parameter.data.normal_(0.0, 0.2)
    checkpoint = save_checkpoint(task, tmp_path / "det.ckpt", {"image_size": 64})
    run([str(checkpoint), str(image_folder), "--out", str(tmp_path / "out")], capsys)
    results = json.loads((tmp_path / "out" / "detections.json").read_text())
    images = {entry["id"]: entry for entry in json.loads((tmp_path / "out" / "images.json").read_text())["images"]}
    assert results, "the perturbed detector should detect something"
    assert {entry["file_name"] for entry in images.values()} == {"photo.png", "more/scan.png"}
    for result in results:
        entry = images[result["image_id"]]
        assert result["file_name"] == entry["file_name"] and result["category_id"] in (1, 2)
        x, y, w, h = result["bbox"]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0
        assert x + w <= entry["width"] + 1e-3 and y + h <= entry["height"] + 1e-3
        assert 0 < result["score"] <= 1
    assert (images[1]["width"], images[1]["height"]) == SIZES[1][::-1]
    # the photo's boxes are the detector's own on the 64-px input, scaled by 80/64 across and 48/64 down
    from visiondistill.data.images import read_image
    from visiondistill.data.transforms import classification_transforms

    task.eval()
    image = classification_transforms(64, train=False)(image=read_image(image_folder / "photo.png", channels=3))
    with torch.no_grad():
        expected = task.student.postprocess(task.student(image["image"][None]))[0]
    boxes = expected["boxes"] * torch.tensor([80 / 64, 48 / 64] * 2)
    boxes = torch.minimum(boxes.clamp_min(0), torch.tensor([80.0, 48.0, 80.0, 48.0]))
    got = [r["bbox"] for r in results if r["file_name"] == "photo.png"]
    want = [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in boxes.tolist()]
    np.testing.assert_allclose(got, want, atol=0.01)


def test_keypoints_write_coco_keypoint_results_in_image_pixels(tmp_path, image_folder, capsys):
    torch.manual_seed(0)
    task = KeypointTask(student=keypoints.TINY_STUDENT, num_keypoints=4, keypoint_names=["t", "r", "b", "l"])
    checkpoint = save_checkpoint(task, tmp_path / "kp.ckpt", {"input_size": 32})
    run([str(checkpoint), str(image_folder), "--out", str(tmp_path / "out")], capsys)
    results = json.loads((tmp_path / "out" / "keypoints.json").read_text())
    meta = json.loads((tmp_path / "out" / "images.json").read_text())
    assert meta["categories"][0]["keypoints"] == ["t", "r", "b", "l"]
    sizes = {entry["id"]: (entry["width"], entry["height"]) for entry in meta["images"]}
    assert len(results) == 2
    for result in results:
        width, height = sizes[result["image_id"]]
        points = np.asarray(result["keypoints"]).reshape(4, 3)
        # the crop is the square around the whole image: keypoints may reach into its padding, not beyond
        side = max(width, height)
        assert (points[:, 0] >= (width - side) / 2 - 1).all() and (points[:, 0] <= (width + side) / 2 + 1).all()
        assert (points[:, 1] >= (height - side) / 2 - 1).all() and (points[:, 1] <= (height + side) / 2 + 1).all()
        assert (points[:, 2] == 1).all() and len(result["keypoint_scores"]) == 4


def test_the_teacher_is_not_loaded_without_teacher(tmp_path, image_folder, capsys, monkeypatch):
    torch.manual_seed(0)
    teacher = ClassificationTask(student=ClassifierSpec(name="test_efficientnet"), num_classes=3)
    teacher_checkpoint = save_checkpoint(teacher, tmp_path / "teacher.ckpt")
    spec = ClassifierSpec(name="test_efficientnet", checkpoint=str(teacher_checkpoint))
    task = ClassificationTask(student=ClassifierSpec(name="test_resnet"), teacher=spec, num_classes=3)
    checkpoint = save_checkpoint(task, tmp_path / "student.ckpt", {"image_size": 32})
    teacher_checkpoint.unlink()  # building the teacher from the student's hyper-parameters would now fail
    loaded = []
    original = predict_module.load_task_module
    monkeypatch.setattr(predict_module, "load_task_module", lambda path: loaded.append(Path(path)) or original(path))
    run([str(checkpoint), str(image_folder), "--out", str(tmp_path / "out"), "--explain"], capsys)
    assert loaded == [checkpoint]
    maps = np.load(tmp_path / "out" / "saliency" / "photo.npz")
    assert "student_map" in maps and "teacher_map" not in maps


def test_explain_writes_student_and_teacher_maps(tmp_path, image_folder, capsys):
    torch.manual_seed(0)
    student = save_checkpoint(
        ClassificationTask(student=ClassifierSpec(name="test_resnet"), num_classes=3),
        tmp_path / "s.ckpt",
        {"image_size": 32},
    )
    teacher = save_checkpoint(
        ClassificationTask(student=ClassifierSpec(name="test_efficientnet"), num_classes=3), tmp_path / "t.ckpt"
    )
    out = tmp_path / "out"
    argv = [str(student), str(image_folder), "--out", str(out), "--explain", "--teacher", str(teacher)]
    printed = run([*argv, "--image-size", "96"], capsys)
    assert "saliency/" in printed
    for name in ("photo", "more__scan"):
        maps = np.load(out / "saliency" / f"{name}.npz")
        assert maps["student_map"].shape == maps["teacher_map"].shape == (96, 96)
        assert 0 <= maps["student_map"].min() and maps["student_map"].max() <= 1
        # two networks, two maps (at 96 px the last stage is 3×3: at 32 px it would be one constant pixel)
        assert maps["student_map"].max() == pytest.approx(1) and not np.array_equal(
            maps["student_map"], maps["teacher_map"]
        )
        with Image.open(out / "saliency" / f"{name}.png") as picture:
            assert picture.size == (3 * 96, 96)  # the input, then the student's and the teacher's overlay


def test_segmentation_explain_writes_maps(tmp_path, image_folder, capsys):
    torch.manual_seed(0)
    task = SegmentationTask(student=segmentation.TINY_STUDENT, num_classes=3)
    checkpoint = save_checkpoint(task, tmp_path / "seg.ckpt", {"image_size": 32})
    run([str(checkpoint), str(image_folder), "--out", str(tmp_path / "out"), "--explain"], capsys)
    maps = np.load(tmp_path / "out" / "saliency" / "photo.npz")
    assert maps["student_map"].shape == (32, 32) and maps["image"].shape == (32, 32, 3)


@pytest.mark.parametrize("task", ["keypoints", "detection"])
def test_input_pixels_map_back_to_the_image(tmp_path, task):
    """A bright spot found in the model's input maps back (``to_image``) to where it is in the original image."""
    image = np.zeros((48, 80, 3), np.uint8)
    image[8:13, 58:63] = 255  # centre (60.5, 10.5) in continuous pixel coordinates
    Image.fromarray(image).save(tmp_path / "spot.png")
    prepared = predict_module._prepare(tmp_path / "spot.png", task, 32, 3, None)
    weights = prepared.display[..., 0]
    ys, xs = np.mgrid[: weights.shape[0], : weights.shape[1]]
    centre = np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum() + 0.5  # pixel centres
    mapped = prepared.to_image[:, :2] @ centre + prepared.to_image[:, 2]
    np.testing.assert_allclose(mapped, [60.5, 10.5], atol=0.6)
