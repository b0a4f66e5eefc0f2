"""``visiondistill cache-teacher``: the pre-pass fills the config's cache, and the following fit runs no teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from visiondistill.cli import main

from ..support.cli import tiny_overrides

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "classification" / "shapes_kd_cached.yaml"

pytestmark = pytest.mark.filterwarnings("ignore:.*has no images of class", "ignore:.*num_workers")


def test_the_pre_pass_fills_every_view_once(tmp_path: Path, capsys):
    config = yaml.safe_load(CONFIG.read_text())
    config["model"]["init_args"]["teacher"] = {"name": "test_resnet"}  # any weights: nothing is trained here
    config["data"]["init_args"]["num_views"] = 2
    config["trainer"]["callbacks"][1]["init_args"]["directory"] = str(tmp_path / "cache")
    path = tmp_path / "kd_cached.yaml"
    path.write_text(yaml.safe_dump(config))
    overrides = [arg for arg in tiny_overrides(tmp_path, "kd_cached") if arg.startswith("--data.")]
    assert main(["cache-teacher", "--config", str(path), *overrides]) == 0
    assert "16 teacher outputs computed" in capsys.readouterr().out  # 8 images x 2 views
    shards = sorted((tmp_path / "cache" / "shards").glob("rank0-*.pt"))
    assert len(shards) == 1 and torch.load(shards[0], weights_only=True)["ids"].shape == (16, 2)
    assert main(["cache-teacher", "--config", str(path), *overrides]) == 0
    assert "0 teacher outputs computed" in capsys.readouterr().out
