"""`--quantize int8` of the multi-task student: per head, fp32 ONNX scores as PyTorch does and INT8 stays close.

Stated tolerances on the test images, per head (recomputed here from the ONNX files, independently of the summary):
``cls`` top-1 agreement >= 90 % and relative logits error ``‖int8 − fp32‖ / ‖fp32‖`` <= 0.15; ``seg`` pixel
agreement >= 90 % and relative logits error <= 0.25 (the single-task classification and segmentation tolerances of
tests/reporting/test_quantize.py); each head's headline test metric within 0.1 of fp32's. Measured on the 16 test
images after one epoch: agreement 1.000 and 0.990, relative error 0.075 and 0.068, top-1 and mIoU gaps 0.000 and
0.004.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from visiondistill.distill import LogitDistillation, PixelwiseDistillation
from visiondistill.reporting import quantize
from visiondistill.reporting.document import to_markdown
from visiondistill.reporting.export import ExportError, export_onnx, load_export_spec
from visiondistill.reporting.loader import load_task_module
from visiondistill.reporting.measure import test_metrics as torch_test_metrics
from visiondistill.reporting.quantize import OnnxStudent, headline_keys, model_rows, quantize_export
from visiondistill.reporting.quantize_tasks import agreement_counts
from visiondistill.reporting.sections.quantized import quantization_section

from ..support.multitask import CLS_TEACHER, SquaresWithClass, saved_teachers, tiny_multitask

#: Per head: the least prediction agreement and the largest relative error of INT8 against fp32.
TOLERANCE = {"cls": (0.9, 0.15), "seg": (0.9, 0.25)}
HEADLINE = {"cls": "test/cls/acc_top1", "seg": "test/seg/miou"}
METRIC_GAP = 0.1


class _Squares(pl.LightningDataModule):
    """Multi-task batches ``{"image", "mask", "label"}``: 32 training, 16 test images of 32 px."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(SquaresWithClass(n=32, seed=0), batch_size=8)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(SquaresWithClass(n=16, seed=1), batch_size=8)


def _spec_through_checkpoint(module, path):
    """The export spec of a module's student, through a checkpoint written next to ``path``."""
    checkpoint = path.with_suffix(".ckpt")
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(checkpoint)
    return load_export_spec(checkpoint, image_size=32)


def _run(path, images: np.ndarray) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: images}), strict=True))


@pytest.mark.slow
def test_int8_multitask_student_per_head(tmp_path, trainer_kwargs):
    pl.seed_everything(0, verbose=False)  # the tolerances hold for one fixed student
    teachers = saved_teachers(tmp_path / "teachers")
    module = tiny_multitask(teachers=teachers, lr=5e-3, warmup_epochs=0)
    terms = [LogitDistillation(teacher="cls_t"), PixelwiseDistillation(teacher="seg_t")]
    data = _Squares()
    trainer = pl.Trainer(**{**trainer_kwargs, "max_epochs": 1}, callbacks=terms, limit_val_batches=0)
    trainer.fit(module, data.train_dataloader())
    run = tmp_path / "run"
    checkpoint = run / "checkpoints" / "best.ckpt"  # inside a run folder, where the report looks
    trainer.save_checkpoint(checkpoint)
    spec = load_export_spec(checkpoint, image_size=32)
    fp32 = export_onnx(spec, checkpoint.with_suffix(".onnx")).path
    summary = quantize_export(checkpoint, spec, fp32, data, calibration_images=16, latency_runs=3)
    int8 = checkpoint.with_suffix(".int8.onnx")
    assert summary.task == "multitask" and summary.calibration_images == 16
    graph = onnx.load(str(int8)).graph
    assert [output.name for output in graph.output] == ["cls", "seg"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}

    # The ONNX heads in the module's own test loop give PyTorch's metrics, head by head.
    torch_metrics = torch_test_metrics(load_task_module(checkpoint), data)
    for key in ("test/cls/acc_top1", "test/seg/miou", "test/seg/dice", "test/seg/loss", "test/cls/loss"):
        assert abs(summary.fp32.metrics[key] - torch_metrics[key]) < 1e-4, key

    # INT8 against fp32 per head, recomputed from the files on the test images.
    images = SquaresWithClass(n=16, seed=1).images.numpy()
    want, got = _run(fp32, images), _run(int8, images)
    for head, (least_agreement, largest_error) in TOLERANCE.items():
        agreement = float((want[head].argmax(axis=1) == got[head].argmax(axis=1)).mean())
        relative = float(np.linalg.norm(got[head] - want[head]) / np.linalg.norm(want[head]))
        assert agreement >= least_agreement and relative <= largest_error, (head, agreement, relative)
        assert abs(summary.heads[head]["agreement"] - agreement) < 1e-6, head
        assert abs(summary.heads[head]["relative_error"] - relative) < 1e-4, head
        gap = abs(summary.int8.metrics[HEADLINE[head]] - summary.fp32.metrics[HEADLINE[head]])
        assert gap <= METRIC_GAP, (head, gap)
    assert summary.agreement == min(values["agreement"] for values in summary.heads.values())
    assert summary.relative_error == max(values["relative_error"] for values in summary.heads.values())

    # Each head's teacher, exported and scored on its head's metric, gives the PyTorch teacher's score.
    assert summary.teacher is None and summary.teacher_heads == {"cls_t": "cls", "seg_t": "seg"}
    networks = module.build_teachers(teachers)
    for teacher_id, head in summary.teacher_heads.items():
        variant = summary.teachers[teacher_id]
        expected = module.score_heads({head: networks[teacher_id]}, data.test_dataloader())
        assert set(variant.metrics) == {HEADLINE[head]}
        assert abs(variant.metrics[HEADLINE[head]] - expected[HEADLINE[head]]) < 1e-6, teacher_id
        assert variant.latency_ms > 0 and checkpoint.with_suffix(f".teacher.{teacher_id}.onnx").is_file()

    # The printed table and the report's INT8 section: per-head columns, one row per teacher, per-head figures.
    table = summary.table()
    for text in ("| teacher fp32: cls_t (cls head) |", "test/cls/acc_top1", "test/seg/miou", "seg head: agreement"):
        assert text in table, text
    markdown = to_markdown(quantization_section(SimpleNamespace(runs=[SimpleNamespace(name="mt", path=run)])))
    for text in ("teacher fp32: seg_t (seg head)", "test/seg/dice", "cls head: agreement", "student INT8"):
        assert text in markdown, text
    assert f"{summary.int8.metrics['test/seg/miou']:.4g}" in markdown

    # A teacher that cannot be rebuilt leaves a note, not a row.
    missing = quantize.QuantizationSummary(**{**summary.__dict__, "teachers": {}, "notes": []})
    entries = [CLS_TEACHER | {"checkpoint": str(tmp_path / "gone.pt")}]
    quantize._measure_head_teachers(missing, module, entries, fp32, data, (1, 3, 32, 32), 1, 1)
    assert missing.teachers == {} and "gone.pt" in missing.notes[0]


def test_onnx_student_returns_the_heads_by_name(tmp_path):
    """In the module's test loop the session stands in for the student: ``{"cls": N×C, "seg": N×K×H×W}``."""
    torch.manual_seed(0)
    module = tiny_multitask(teachers=None).eval()
    path = tmp_path / "mt.onnx"
    export_onnx(_spec_through_checkpoint(module, path), path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = module.student(images)
    got = OnnxStudent(session, module.heads)(images)
    assert list(got) == ["cls", "seg"]
    for head in ("cls", "seg"):
        torch.testing.assert_close(got[head], expected[head], rtol=0, atol=1e-4)
    assert OnnxStudent(session)(images).shape == (2, 3)  # single-task use: the first output
    with pytest.raises(ExportError, match="depth"):
        OnnxStudent(session, ("cls", "depth"))


def test_agreement_is_counted_per_head():
    want = [np.array([[2.0, 1.0], [0.0, 1.0]]), np.zeros((2, 3, 2, 2), np.float32)]
    got = [np.array([[2.0, 1.0], [1.0, 0.0]]), np.zeros((2, 3, 2, 2), np.float32)]
    want[1][0, 1] = got[1][0, 1] = 1.0  # image 0: class 1 on every pixel, image 1: class 0
    got[1][0, 2, 0, 0] = 2.0  # INT8 flips one pixel of image 0 to class 2
    assert agreement_counts("multitask", want, got) == ((1, 7), (2, 8))


def test_headline_columns_are_each_heads_metrics():
    metrics = {"test/cls/acc_top1": 0.5, "test/seg/miou": 0.4, "test/seg/dice": 0.3, "test/seg/iou/circle": 0.2}
    metrics |= {"test/seg/loss": 1.0, "test/loss": 2.0}
    variant = {"metrics": metrics, "latency_ms": 1.0, "size_mb": 1.0}
    teacher = {"metrics": {"test/cls/acc_top1": 0.6}, "latency_ms": 2.0, "size_mb": 3.0}
    summary = {"fp32": variant, "int8": variant, "teacher": None, "heads": {"cls": {}, "seg": {}}}
    summary |= {"teachers": {"cls_t": teacher}, "teacher_heads": {"cls_t": "cls"}}
    assert headline_keys(summary) == ["test/cls/acc_top1", "test/seg/dice", "test/seg/miou"]
    labels = [label for label, _ in model_rows(summary)]
    assert labels == ["student fp32", "student INT8", "teacher fp32: cls_t (cls head)"]
