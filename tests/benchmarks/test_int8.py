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


def test_multitask_run_distils_each_head_from_its_task_teacher(bench, tmp_path):
    spec = bench.TASKS["multitask"]
    teachers = {"cls": tmp_path / "cls.ckpt", "seg": tmp_path / "seg.ckpt"}
    path = bench.run_config(bench.ROOT / spec.student, tmp_path, "multitask", "student", 2, {}, teacher=teachers)
    entries = yaml.safe_load(path.read_text())["model"]["init_args"]["teachers"]
    # Each teacher's spec comes from its checkpoint (the shipped specs need not match the benchmark's teacher runs).
    assert sorted(e["head"] for e in entries) == ["cls", "seg"]
    for entry in entries:
        assert entry["checkpoint"] == str(teachers[entry["head"]])
        assert set(entry) == {"id", "head", "in_channels", "checkpoint"}
    assert dict(spec.head_teachers) == {"cls": "classification", "seg": "segmentation"}


def test_multitask_summary_gives_one_row_per_head(bench):
    def variant(metrics: dict, ms: float) -> dict:
        return {"metrics": metrics, "latency_ms": ms}

    student = {"test/cls/acc_top1": 0.5, "test/seg/miou": 0.3}
    summary = {"fp32": variant(student, 2.0), "int8": variant(student | {"test/seg/miou": 0.29}, 1.0)}
    summary |= {"agreement": 0.9, "heads": {"cls": {"agreement": 0.95}, "seg": {"agreement": 0.9}}, "teacher": None}
    summary |= {
        "teachers": {"c": variant({"test/cls/acc_top1": 0.7}, 10.0), "s": variant({"test/seg/miou": 0.6}, 30.0)}
    }
    summary["teacher_heads"] = {"c": "cls", "s": "seg"}
    rows = bench.head_rows("multitask", summary, [2.0, 1.0, 10.0, 30.0])
    lines = bench.table(rows).splitlines()
    assert (
        lines[2]
        == "| multitask (cls head) | test/cls/acc_top1 | 0.500 | 0.500 | 2.00 | 1.00 | 0.50 | 0.950 | 0.700 | 10.00 |"
    )
    assert (
        lines[3]
        == "| multitask (seg head) | test/seg/miou | 0.300 | 0.290 | 2.00 | 1.00 | 0.50 | 0.900 | 0.600 | 30.00 |"
    )
