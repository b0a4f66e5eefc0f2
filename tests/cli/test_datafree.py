"""configs/classification/shapes_datafree.yaml: a short data-free fit from the shipped config writes the image grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from visiondistill.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_datafree_config_fits_and_saves_the_grid(tmp_path: Path):
    config = yaml.safe_load((ROOT / "configs/classification/shapes_datafree.yaml").read_text())
    model = config["model"]["init_args"]
    model["student"] = {"name": "test_resnet"}
    model["teacher"] = {"name": "test_resnet"}  # any weights will do: the test checks the plumbing
    data = config["data"]["init_args"]
    data.update(image_size=32, batch_size=4, batches_per_epoch=2, iterations=2, jitter=1)
    data["eval_data"]["init_args"].update(
        data_dir=str(tmp_path / "data"), image_size=32, batch_size=4, num_workers=0, num_train=6, num_val=6, num_test=0
    )
    config["trainer"]["logger"]["init_args"].update(save_dir=str(tmp_path / "runs"), name="datafree")
    path = tmp_path / "datafree.yaml"
    path.write_text(yaml.safe_dump(config))
    args = ["fit", "--config", str(path), "--trainer.max_epochs=2", "--trainer.limit_val_batches=1"]
    args += ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    assert main(args) == 0
    run = tmp_path / "runs" / "datafree"
    grids = sorted((run / "data_free").glob("*.png"))
    assert [g.name for g in grids] == ["epoch_000.png", "epoch_001.png"]
    grid = np.asarray(Image.open(grids[0]))
    assert grid.shape == (2 + 34, 2 + 4 * 34, 3) and grid.std() > 0  # one row of 4 images of 32 px, 2 px gaps
    assert not np.array_equal(grid, np.asarray(Image.open(grids[1])))  # a fresh batch every epoch
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4  # 2 synthesised batches per epoch, 2 epochs
    assert checkpoint["hyper_parameters"]["task_weight"] == 0.0
