"""benchmarks/int8.py: the short-run configs it derives from the shipped ones, and its table."""

from __future__ import annotations

import pytest
import yaml

from ..support.benchmarks import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("int8")


@pytest.mark.parametrize("task", ["classification", "segmentation", "detection", "keypoints"])
def test_short_run_configs_of_every_task(bench, task, tmp_path):
    spec = bench.TASKS[task]
    data = {spec.size_key: 32, "num_train": 40}
    path = bench.run_config(bench.ROOT / spec.student, tmp_path, task, "student", 2, data, teacher=tmp_path / "t.ckpt")
    config = yaml.safe_load(path.read_text())
    trainer, init = config["trainer"], config["data"]["init_args"]
    assert trainer["max_epochs"] == 2 and trainer["accelerator"] == "cpu"
    assert trainer["logger"]["init_args"] == {"save_dir": str(tmp_path / task), "name": "student", "version": ""}
    classes = [c["class_path"] for c in trainer["callbacks"]]
    assert "pytorch_lightning.callbacks.ModelCheckpoint" in classes  # best.ckpt, which the export reads
    assert not [c for c in classes if c.startswith("visiondistill.explain")]
    assert any(c.startswith("visiondistill.distill") for c in classes)  # the distillation itself is kept
    assert init[spec.size_key] == 32 and init["num_train"] == 40 and init["num_workers"] == 0
    assert init["data_dir"] == str(tmp_path / "data" / task)
    assert config["model"]["init_args"]["teacher"]["checkpoint"] == str(tmp_path / "t.ckpt")


def _variant(metric: float, ms: float) -> dict:
    return {"metrics": {"test/map": metric, "test/map/circle": 0.9}, "latency_ms": ms}


def test_table_row_has_ratio_agreement_and_teacher(bench):
    summary = {"fp32": _variant(0.5, 4.0), "int8": _variant(0.48, 1.0), "teacher": _variant(0.7, 20.0)}
    rows = [bench.row("detection", "test/map", {**summary, "agreement": 0.95})]
    rows.append(bench.row("detection", "test/map", {**summary, "teacher": None, "agreement": 1.0}))
    assert rows[0]["ratio"] == 0.25
    lines = bench.table(rows).splitlines()
    assert lines[2] == "| detection | test/map | 0.500 | 0.480 | 4.00 | 1.00 | 0.25 | 0.950 | 0.700 | 20.00 |"
    assert lines[3].endswith("| 1.000 | – | – |")  # a student without a teacher checkpoint


def test_run_folders_must_name_a_task_and_hold_a_checkpoint(bench, tmp_path):
    with pytest.raises(SystemExit, match="TASK=FOLDER"):
        bench.parse_runs(["pose=" + str(tmp_path)])
    with pytest.raises(SystemExit, match="no checkpoints/best.ckpt"):
        bench.parse_runs(["detection=" + str(tmp_path)])
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.ckpt").write_bytes(b"")
    assert bench.parse_runs(["detection=" + str(tmp_path)]) == {"detection": tmp_path}
