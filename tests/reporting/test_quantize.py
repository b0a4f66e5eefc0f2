"""`visiondistill export CKPT --quantize int8`: INT8 students stay close to fp32, and the summary is measured.

Stated tolerances on the test images (the files are re-run here, independently of the summary): classification
top-1 agreement >= 90 % and relative logits error ``‖int8 − fp32‖ / ‖fp32‖`` <= 0.15; segmentation pixel agreement
>= 90 % and relative logits error <= 0.25 (a U-Net's decoder stacks more quantized layers; measured 0.17 here).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from visiondistill.cli import main
from visiondistill.reporting.document import to_markdown
from visiondistill.reporting.export import export_onnx, load_export_spec
from visiondistill.reporting.quantize import quantize_export, run_datamodule
from visiondistill.reporting.sections import TASK_SECTIONS
from visiondistill.reporting.sections.quantized import quantization_section
from visiondistill.tasks import DistillationTask, SegmentationTask

from ..support import segmentation

AGREEMENT, RELATIVE_ERROR, SEGMENTATION_RELATIVE_ERROR = 0.9, 0.15, 0.25


def _outputs(path: Path, images: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def _within_tolerance(
    fp32: Path, int8: Path, images: np.ndarray, relative_error: float = RELATIVE_ERROR
) -> tuple[float, float]:
    want, got = _outputs(fp32, images), _outputs(int8, images)
    agreement = float((want.argmax(axis=1) == got.argmax(axis=1)).mean())
    relative = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    assert agreement >= AGREEMENT, agreement
    assert relative <= relative_error, relative
    return agreement, relative


def _is_quantized(path: Path) -> bool:
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    return {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_cli_int8_classification_student(trained_run, tmp_path, capsys):
    output = tmp_path / "student.onnx"
    argv = ["export", str(trained_run / "checkpoints" / "best.ckpt"), "--output", str(output), "--quantize", "int8"]
    assert main([*argv, "--calibration-images", "6", "--latency-runs", "5"]) == 0
    printed = capsys.readouterr().out
    assert "student fp32" in printed and "student INT8" in printed and "test/acc_top1" in printed
    int8 = tmp_path / "student.int8.onnx"
    assert _is_quantized(int8) and not _is_quantized(output)
    summary = json.loads((tmp_path / "student.quantization.json").read_text())
    assert summary["task"] == "classification" and summary["calibration_images"] == 6
    for variant in ("fp32", "int8"):
        assert set(summary[variant]["metrics"]) >= {"test/acc_top1", "test/acc_top5"}
        assert summary[variant]["latency_ms"] > 0
    assert summary["int8"]["size_mb"] < summary["fp32"]["size_mb"]
    assert summary["teacher"] is None  # this run's teacher was a random network, not a checkpoint
    assert summary["agreement"] >= AGREEMENT and summary["relative_error"] <= RELATIVE_ERROR
    assert "| student INT8 |" in (tmp_path / "student.quantization.md").read_text()
    datamodule = run_datamodule(trained_run / "checkpoints" / "best.ckpt")
    datamodule.setup("test")
    images = torch.cat([batch[0] for batch in datamodule.test_dataloader()]).numpy()
    agreement, relative = _within_tolerance(output, int8, images)
    assert abs(agreement - summary["agreement"]) < 1e-6 and abs(relative - summary["relative_error"]) < 1e-4


def test_teacher_checkpoint_is_measured_next_to_the_student(trained_run, tmp_path):
    run = tmp_path / "kd"
    shutil.copytree(trained_run, run)
    checkpoint = run / "checkpoints" / "best.ckpt"
    data = torch.load(checkpoint, weights_only=False)
    data["hyper_parameters"]["teacher"] = {"name": "test_resnet", "checkpoint": str(run / "checkpoints" / "last.ckpt")}
    torch.save(data, checkpoint)
    spec = load_export_spec(checkpoint)
    fp32 = export_onnx(spec, checkpoint.with_suffix(".onnx")).path  # inside the run folder, where the report looks
    summary = quantize_export(checkpoint, spec, fp32, run_datamodule(checkpoint), 4, 3)
    assert summary.teacher is not None and summary.notes == []
    assert "test/acc_top1" in summary.teacher.metrics and summary.teacher.latency_ms > 0
    assert "| teacher fp32 |" in summary.table()
    assert (run / "checkpoints" / "best.teacher.onnx").is_file()
    # The report's section (registered for every task module) shows the three models from the JSON summary.
    assert quantization_section in TASK_SECTIONS[DistillationTask]
    blocks = quantization_section(SimpleNamespace(runs=[SimpleNamespace(name="kd", path=run)]))
    markdown = to_markdown(blocks)
    assert "INT8 on the edge runtime" in markdown and "best.quantization.json" in markdown
    for label in ("student fp32", "student INT8", "teacher fp32"):
        assert label in markdown
    assert f"{summary.teacher.metrics['test/acc_top1']:.4g}" in markdown
    assert quantization_section(SimpleNamespace(runs=[SimpleNamespace(name="kd", path=trained_run)])) == []


class _Squares(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(segmentation.square_masks(n=16, seed=0), batch_size=8)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(segmentation.square_masks(n=8, seed=1), batch_size=8)


def test_int8_segmentation_student_within_tolerance(tmp_path, seg_specs, trainer_kwargs):
    torch.manual_seed(0)
    task = SegmentationTask(student=seg_specs[0], num_classes=3)
    trainer = pl.Trainer(**{**trainer_kwargs, "max_steps": 4}, callbacks=[])
    trainer.fit(task, _Squares().train_dataloader())
    checkpoint = tmp_path / "student.ckpt"
    trainer.save_checkpoint(checkpoint)
    spec = load_export_spec(checkpoint, image_size=32)
    fp32 = export_onnx(spec, tmp_path / "seg.onnx").path
    summary = quantize_export(checkpoint, spec, fp32, _Squares(), calibration_images=16, latency_runs=3)
    assert summary.task == "segmentation" and summary.calibration_images == 16
    assert {"test/miou", "test/dice"} <= set(summary.fp32.metrics) & set(summary.int8.metrics)
    assert _is_quantized(tmp_path / "seg.int8.onnx")
    images = segmentation.square_masks(n=8, seed=1).tensors[0].numpy()
    agreement, _ = _within_tolerance(fp32, tmp_path / "seg.int8.onnx", images, SEGMENTATION_RELATIVE_ERROR)
    assert abs(agreement - summary.agreement) < 1e-6
    assert abs(summary.int8.metrics["test/miou"] - summary.fp32.metrics["test/miou"]) <= 0.1


def test_calibration_images_are_one_seeded_unaugmented_draw(tmp_path):
    from visiondistill.data import ShapesClassification
    from visiondistill.reporting.quantize import calibration_batches

    data = ShapesClassification(
        str(tmp_path / "shapes"), image_size=32, batch_size=4, num_workers=0, num_train=42, num_val=7, num_test=7
    )
    first, second = calibration_batches(data, 10), calibration_batches(data, 10)
    assert sum(batch.shape[0] for batch in first) == 10
    # Two exports of one checkpoint calibrate on the same images (the augmented training loader would differ).
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    # They are training images as the test transform reads them, drawn across the split, not its first files
    # (ImageFolder sorts by class).
    plain = data._dataset("train", train=False)
    chosen = torch.randperm(len(plain), generator=torch.Generator().manual_seed(0))[:10].tolist()
    assert np.array_equal(np.concatenate(first), torch.stack([plain[i][0] for i in chosen]).numpy())
    assert len({plain[i][1] for i in chosen}) > 1
