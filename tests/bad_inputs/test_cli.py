"""Bad configs, command lines, checkpoints, callback arguments and COCO files: each refused with one short message.

The command-line cases run ``visiondistill …`` in-process (`expect_cli_error`: non-zero exit, no traceback, no
jsonargparse union dump, the culprit named on stderr) and check that the teacher's run folder, whose checkpoint
several of them use, is left byte for byte as it was. Every case fails while the run is being built or set up,
before any training step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from visiondistill.data.detection import CocoDetectionDataset
from visiondistill.data.errors import DataError, MissingDataError
from visiondistill.data.keypoints.coco import read_coco_keypoints
from visiondistill.data.keypoints.dataset import KeypointCrops
from visiondistill.tasks import ClassificationTask, DetectionTask

from ..support import detection, keypoints
from ..support.bad_inputs import expect_cli_error, expect_user_error, unchanged
from ..support.cli import tiny_overrides

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "classification"
SCRATCH, KD = CONFIGS / "shapes_student_scratch.yaml", CONFIGS / "shapes_kd.yaml"


def _save_checkpoint(task: pl.LightningModule, path: Path) -> Path:
    """A Lightning checkpoint of an untrained task module (no fit needed: the cases fail before training)."""
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    trainer.strategy.connect(task)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A teacher run folder (3 classes), a detection run's checkpoint and edited configs, written once."""
    root = tmp_path_factory.mktemp("bad_cli")
    teacher = root / "runs" / "teacher"
    _save_checkpoint(
        ClassificationTask(student={"name": "test_resnet"}, num_classes=3), teacher / "checkpoints" / "best.ckpt"
    )
    (teacher / "config.yaml").write_text(SCRATCH.read_text())
    spec = detection.TINY_STUDENT
    _save_checkpoint(
        DetectionTask(student=spec, num_classes=2), root / "runs" / "detector" / "checkpoints" / "best.ckpt"
    )
    config = yaml.safe_load(KD.read_text())
    config["model"]["init_args"]["teacher"] = {
        "name": "test_resnet",
        "checkpoint": str(teacher / "checkpoints" / "best.ckpt"),
    }
    _write(root / "kd.yaml", config)
    return root


def _write(path: Path, content: dict | str) -> Path:
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def _kd_with(root: Path, teacher: dict | None = None, callback: dict | None = None) -> Path:
    """``kd.yaml`` with another teacher, or with LogitDistillation's init_args replaced."""
    config = yaml.safe_load((root / "kd.yaml").read_text())
    if teacher is not None:
        config["model"]["init_args"]["teacher"] = teacher
    if callback is not None:
        config["trainer"]["callbacks"][0]["init_args"] = callback
    name = f"kd_{abs(hash(json.dumps([teacher, callback], sort_keys=True)))}.yaml"
    return _write(root / name, config)


def _fit(root: Path, config: Path | str, *extra: str) -> list[str]:
    return ["fit", "--config", str(config), *tiny_overrides(root, "new_run", extra=extra)]


# Each case: (id, argv builder, names the message must contain).
CLI_CASES = [
    (
        "unknown-top-level-flag",
        lambda r: _fit(r, SCRATCH, "--trainr.max_epochs=1"),
        ["trainr.max_epochs", "did you mean"],
    ),
    (
        "unknown-top-level-key-in-yaml",
        lambda r: [*_fit(r, SCRATCH), "--config", str(_write(r / "top.yaml", {"trainr": {"max_epochs": 1}}))],
        ["trainr.max_epochs", "trainer.max_epochs"],
    ),
    ("unknown-init-arg-flag", lambda r: _fit(r, SCRATCH, "--model.init_args.studnet.name=x"), ["studnet", "'student'"]),
    (
        "unknown-init-arg-in-yaml",
        lambda r: [*_fit(r, SCRATCH), "--config", str(_write(r / "init.yaml", {"model": {"init_args": {"lrr": 0.1}}}))],
        ["lrr", "ClassificationTask", "'lr'"],
    ),
    ("wrong-type", lambda r: _fit(r, SCRATCH, "--model.init_args.lr=fast"), ["lr", "fast", "float"]),
    ("missing-config-file", lambda r: ["fit", "--config", str(r / "nowhere.yaml")], ["nowhere.yaml", "does not exist"]),
    ("config-not-yaml", lambda r: ["fit", "--config", str(_write(r / "bad.yaml", "model: [1, 2\n"))], ["bad.yaml"]),
    ("num-classes-zero", lambda r: _fit(r, SCRATCH, "--model.init_args.num_classes=0"), ["num_classes", "0"]),
    ("negative-lr", lambda r: _fit(r, SCRATCH, "--model.init_args.lr=-0.1"), ["lr must be > 0", "-0.1"]),
    ("no-training-images", lambda r: _fit(r, SCRATCH, "--data.init_args.num_train=0"), ["num_train", "0"]),
    (
        "unknown-callback-arg-in-yaml",
        lambda r: _fit(r, _kd_with(r, callback={"temprature": 2.0})),
        ["temprature", "LogitDistillation", "'temperature'"],
    ),
    (
        "negative-temperature-in-yaml",
        lambda r: _fit(r, _kd_with(r, callback={"temperature": -1.0})),
        ["LogitDistillation", "temperature", "-1"],
    ),
    (
        "negative-temperature-override",
        lambda r: _fit(r, r / "kd.yaml", "--trainer.callbacks.LogitDistillation.temperature=-2"),
        ["LogitDistillation", "temperature", "-2"],
    ),
    (
        "override-unknown-callback",
        lambda r: _fit(r, r / "kd.yaml", "--trainer.callbacks.LogitDistilation.temperature=2"),
        ["LogitDistilation", "LogitDistillation, AttentionTransfer"],
    ),
    (
        "override-unknown-argument",
        lambda r: _fit(r, r / "kd.yaml", "--trainer.callbacks.LogitDistillation.temprature=2"),
        ["temprature", "temperature, weight"],
    ),
    (
        "override-ambiguous-class",
        lambda r: _fit(
            r,
            _write(r / "two.yaml", {"trainer": {"callbacks": ["visiondistill.distill.LogitDistillation"] * 2}}),
            "--trainer.callbacks.LogitDistillation.weight=2",
        ),
        ["2 LogitDistillation callbacks", "LogitDistillation#1"],
    ),
    (
        "teacher-class-count-mismatch",
        lambda r: _fit(r, r / "kd.yaml"),
        ["teacher", "3 classes", "6", str(Path("teacher") / "checkpoints" / "best.ckpt")],
    ),
    (
        "wrong-task-teacher-checkpoint",
        lambda r: _fit(r, _kd_with(r, teacher={"name": "test_resnet", "checkpoint": str(_detector(r))})),
        ["teacher", str(Path("detector") / "checkpoints" / "best.ckpt")],
    ),
    (
        "missing-teacher-checkpoint",
        lambda r: _fit(r, _kd_with(r, teacher={"name": "resnet18", "checkpoint": str(r / "gone" / "best.ckpt")})),
        [str(Path("gone") / "best.ckpt"), "does not exist"],
    ),
    (
        "unknown-teacher-architecture",
        lambda r: _fit(r, _kd_with(r, teacher={"name": "resnet_huge"})),
        ["teacher", "resnet_huge"],
    ),
    (
        "unknown-layer-name",
        lambda r: _fit(
            r,
            _kd_with(r, teacher={"name": "test_resnet", "num_classes": 6}),
            "--trainer.callbacks.AttentionTransfer.student_layers=[layer9, -1]",
        ),
        ["layer9"],
    ),
    ("accelerator-gpu-without-gpu", lambda r: _fit(r, SCRATCH, "--trainer.accelerator=gpu"), ["--trainer.accelerator"]),
    ("report-of-a-folder-that-is-not-a-run", lambda r: ["report", str(r / "runs")], ["runs", "config.yaml"]),
    (
        "export-of-a-non-checkpoint",
        lambda r: ["export", str(_write(r / "notes.ckpt", "not a checkpoint"))],
        ["notes.ckpt"],
    ),
]


def _detector(root: Path) -> Path:
    return root / "runs" / "detector" / "checkpoints" / "best.ckpt"


@pytest.mark.parametrize(("build", "names"), [case[1:] for case in CLI_CASES], ids=[case[0] for case in CLI_CASES])
def test_a_bad_command_is_refused_in_one_message(root: Path, build, names, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    argv = build(root)
    with unchanged(root / "runs" / "teacher"):
        err = expect_cli_error(argv, capsys, *names)
    assert len(err.strip().splitlines()) <= 8, f"not one short block:\n{err}"


# -- COCO detection and keypoint JSON --------------------------------------------------------------------------


def _coco(tmp_path: Path, **edit) -> Path:
    images = [{"id": i, "file_name": f"{i:03d}.png", "width": 64, "height": 64} for i in (1, 2)]
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 10, 10], "area": 100}]
    path = detection.write_coco(tmp_path, "train", images, annotations)
    content = json.loads(path.read_text())
    content.update(edit.get("replace", {}))
    for key in edit.get("drop", ()):
        del content[key]
    path.write_text(json.dumps(content))
    return path


def _coco_dataset(path: Path) -> CocoDetectionDataset:
    return CocoDetectionDataset(path, path.parents[1] / "images" / "train")


def _missing_images(tmp_path: Path) -> tuple:
    path = _coco(tmp_path)
    for name in ("001.png", "002.png"):
        (tmp_path / "images" / "train" / name).unlink()
    return lambda: _coco_dataset(path), ["2 of the 2 images", "001.png", "002.png", str(path)], MissingDataError


def _not_json(tmp_path: Path) -> tuple:
    path = _coco(tmp_path)
    path.write_text('{"images": [}')
    return lambda: _coco_dataset(path), [str(path), "line 1"], DataError


def _missing_key(tmp_path: Path) -> tuple:
    path = _coco(tmp_path, drop=["annotations"])
    return lambda: _coco_dataset(path), [str(path), "annotations"], DataError


def _short_bbox(tmp_path: Path) -> tuple:
    bad = [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [4, 4, 10], "area": 1}]
    path = _coco(tmp_path, replace={"annotations": bad})
    return lambda: _coco_dataset(path), ["annotation 7", "[4, 4, 10]", "[x, y, width, height]"], DataError


def _unknown_category(tmp_path: Path) -> tuple:
    bad = [{"id": 8, "image_id": 1, "category_id": 9, "bbox": [4, 4, 10, 10], "area": 1}]
    path = _coco(tmp_path, replace={"annotations": bad})
    return lambda: _coco_dataset(path), ["annotation 8", "category_id 9", "[1, 2]"], DataError


def _keypoint_count(tmp_path: Path) -> tuple:
    annotation = keypoints.diamond(5, 1)
    annotation["keypoints"] = annotation["keypoints"][:9]  # three keypoints where the set has four
    keypoints.write_coco(tmp_path, [annotation])
    path = tmp_path / "annotations" / "person_keypoints_train.json"
    return lambda: read_coco_keypoints(path, num_keypoints=4), ["annotation id 5", "3 keypoints", "4"], DataError


def _keypoint_image_missing(tmp_path: Path) -> tuple:
    keypoints.write_coco(tmp_path, [keypoints.diamond(1, 1), keypoints.diamond(2, 2)])
    (tmp_path / "train" / "00002.png").unlink()
    path = tmp_path / "annotations" / "person_keypoints_train.json"

    def build() -> KeypointCrops:
        return KeypointCrops(read_coco_keypoints(path, num_keypoints=4), tmp_path / "train", input_size=32)

    return build, ["1 of the 2 images", "00002.png", "person_keypoints_train.json"], MissingDataError


FILE_CASES = {
    "coco-image-file-missing": _missing_images,
    "coco-not-json": _not_json,
    "coco-missing-key": _missing_key,
    "coco-bbox-of-three-numbers": _short_bbox,
    "coco-unknown-category-id": _unknown_category,
    "keypoint-json-wrong-keypoint-count": _keypoint_count,
    "keypoint-image-file-missing": _keypoint_image_missing,
}


@pytest.mark.parametrize("case", list(FILE_CASES), ids=list(FILE_CASES))
def test_a_bad_coco_file_is_refused_at_setup_naming_it(case: str, tmp_path: Path):
    call, names, error_type = FILE_CASES[case](tmp_path)
    expect_user_error(call, *names, error_type=error_type)


def test_missing_coco_images_fail_at_setup_not_mid_epoch(tmp_path: Path):
    # 7 of 8 images gone: the message names the first five and counts the rest.
    images = [{"id": i, "file_name": f"{i:03d}.png", "width": 64, "height": 64} for i in range(8)]
    path = detection.write_coco(tmp_path, "train", images, [])
    for i in range(1, 8):
        (tmp_path / "images" / "train" / f"{i:03d}.png").unlink()
    error = expect_user_error(
        lambda: _coco_dataset(path), "7 of the 8 images", "and 2 more", error_type=MissingDataError
    )
    assert "001.png, 002.png, 003.png, 004.png, 005.png" in str(error) and "006.png" not in str(error)
