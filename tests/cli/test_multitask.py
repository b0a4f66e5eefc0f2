"""configs/multitask/shapes_multitask.yaml: parsed by the CLI and trained two steps (tiny teachers, 32-px data)."""

from __future__ import annotations

from pathlib import Path

import yaml

from visiondistill.cli import VisionDistillCLI
from visiondistill.models import ClassifierSpec, SegmenterSpec
from visiondistill.tasks import MultiTaskModule

from ..support.multitask import CLS_TEACHER, SEG_TEACHER

ROOT = Path(__file__).resolve().parents[2]


def test_the_multitask_config_trains(tmp_path: Path):
    data = yaml.safe_load((ROOT / "configs/multitask/shapes_multitask.yaml").read_text())
    teachers = data["model"]["init_args"]["teachers"]
    # The config's teachers, shrunk and without checkpoints; their ids (which the callbacks name) are kept.
    data["model"]["init_args"].update(
        decoder_channels=8,
        teachers=[CLS_TEACHER | {"id": teachers[0]["id"]}, SEG_TEACHER | {"id": teachers[1]["id"]}],
    )
    data["data"]["init_args"].update(
        data_dir=str(tmp_path / "shapes"), image_size=32, batch_size=4, num_workers=0, num_train=8, num_val=4,
        num_test=0,
    )  # fmt: skip
    data["trainer"].update(max_epochs=1, logger=False, enable_progress_bar=False, accelerator="cpu", devices=1)
    config = tmp_path / "multitask.yaml"
    config.write_text(yaml.safe_dump(data))
    cli = VisionDistillCLI(args=["--config", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert isinstance(cli.model, MultiTaskModule)
    assert cli.model.teacher_heads == {"cls_teacher": "cls", "seg_teacher": "seg"}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    metrics = cli.trainer.callback_metrics
    for key in ("train/distill/kd_epoch", "train/distill/pixelwise_kd_epoch", "val/cls/acc_top1", "val/seg/miou"):
        assert key in metrics, key
    assert cli.trainer.checkpoint_callback.best_model_path  # monitored val/seg/miou


def _teacher_entry(config: dict, head: str) -> dict:
    (entry,) = [e for e in config["model"]["init_args"]["teachers"] if e["head"] == head]
    return {key: value for key, value in entry.items() if key not in ("id", "head", "weight")}


def _best_checkpoint(config: dict) -> str:
    """Where a shipped teacher config writes its best checkpoint: ``<save_dir>/<name>/checkpoints/best.ckpt``."""
    logger = config["trainer"]["logger"]["init_args"]
    (checkpoint,) = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    return f"{logger['save_dir']}/{logger['name']}/checkpoints/{checkpoint['init_args']['filename']}.ckpt"


def test_the_multitask_config_teachers_are_the_shipped_teachers():
    """Each teacher entry of the multi-task config is the network (and checkpoint) its shipped config trains.

    The segmentation teacher once changed from a U-Net to an FPN while this config still described a U-Net, which
    cannot load the shipped teacher's checkpoint; this catches such drift without training anything.
    """
    load = lambda name: yaml.safe_load((ROOT / "configs" / name).read_text())  # noqa: E731
    multitask = load("multitask/shapes_multitask.yaml")
    shipped = {"cls": load("classification/shapes_teacher.yaml"), "seg": load("segmentation/shapes_teacher.yaml")}
    for head, spec_class in (("cls", ClassifierSpec), ("seg", SegmenterSpec)):
        entry = _teacher_entry(multitask, head)
        assert entry.pop("checkpoint") == _best_checkpoint(shipped[head]), head
        student = shipped[head]["model"]["init_args"]["student"]
        assert spec_class.coerce(entry) == spec_class.coerce(student), head
    # The heads predict the teachers' classes, and the student's data is the segmentation teacher's own.
    init = multitask["model"]["init_args"]
    assert init["num_classes"] == shipped["cls"]["model"]["init_args"]["num_classes"]
    assert init["num_seg_classes"] == shipped["seg"]["model"]["init_args"]["num_classes"]
    data, seg_data = multitask["data"]["init_args"], shipped["seg"]["data"]["init_args"]
    for key in ("data_dir", "image_size", "difficulty", "num_train", "num_val", "num_test"):
        assert data[key] == seg_data[key], key
