"""configs/multitask/shapes_multitask.yaml: parsed by the CLI and trained two steps (tiny teachers, 32-px data)."""

from __future__ import annotations

from pathlib import Path

import yaml

from visiondistill.cli import VisionDistillCLI
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
