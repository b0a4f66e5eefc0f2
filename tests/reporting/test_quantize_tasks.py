"""`--quantize int8` of detection and keypoint students: fp32 ONNX scores as PyTorch does, INT8 stays close.

Stated tolerances on the test images (recomputed here from the ONNX files, independently of the summary):

- detection: the detections of INT8 and fp32 (after the task's post-processing) agree — same class, IoU >= 0.5 — for
  at least 80 % of either's detections; the relative error of the dense boxes and scores is at most 0.05; test mAP
  and mAP@50 move by at most 0.1 (measured 0.007 and 0.044 on these 8 images).
- keypoints: the peak of at least 90 % of the heatmaps is within one heatmap pixel of fp32's; relative heatmap error
  at most 0.1; PCK@0.1 moves by at most 0.1.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime
import pytest
import pytorch_lightning as pl
import torch

from visiondistill.data import CocoDetection
from visiondistill.models.detectors import create_detector
from visiondistill.reporting.document import to_markdown
from visiondistill.reporting.export import export_onnx, load_export_spec
from visiondistill.reporting.loader import load_task_module
from visiondistill.reporting.measure import test_metrics as torch_test_metrics
from visiondistill.reporting.quantize import quantize_export
from visiondistill.reporting.quantize_tasks import agreement_counts, heatmap_peaks, postprocess
from visiondistill.reporting.sections.quantized import quantization_section
from visiondistill.tasks import DetectionTask, KeypointTask

from ..support import detection, keypoints

DETECTION_AGREEMENT, DETECTION_RELATIVE_ERROR, DETECTION_MAP = 0.8, 0.05, 0.1
PEAK_AGREEMENT, HEATMAP_RELATIVE_ERROR, PCK = 0.9, 0.1, 0.1


def _run(path, images: np.ndarray) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})


def _relative(want: np.ndarray, got: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _train(task, datamodule, trainer_kwargs, tmp_path, steps: int):
    trainer = pl.Trainer(**{**trainer_kwargs, "max_epochs": None}, max_steps=steps, limit_val_batches=0)
    trainer.fit(task, datamodule)
    checkpoint = tmp_path / "student.ckpt"
    trainer.save_checkpoint(checkpoint)
    return checkpoint


@pytest.mark.slow
def test_int8_detection_student_within_tolerance(tmp_path, coco_root, trainer_kwargs):
    pl.seed_everything(0, verbose=False)  # weights and augmentation: the tolerances hold for one fixed student
    datamodule = CocoDetection(str(coco_root), image_size=64, batch_size=4, num_workers=0)
    task = DetectionTask(student=detection.TINY_STUDENT, num_classes=2, lr=5e-3)
    checkpoint = _train(task, datamodule, trainer_kwargs, tmp_path, steps=24)
    spec = load_export_spec(checkpoint, image_size=64)
    fp32 = export_onnx(spec, tmp_path / "det.onnx").path
    summary = quantize_export(checkpoint, spec, fp32, datamodule, calibration_images=16, latency_runs=3)
    int8 = tmp_path / "det.int8.onnx"

    # The box decoding and score fusion stay fp32: the graph's outputs come from float nodes, not DequantizeLinear.
    nodes = onnx.load(str(int8)).graph.node
    producers = {output: node.op_type for node in nodes for output in node.output}
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(producers.values())
    assert summary.excluded_nodes > 0 and producers["boxes"] != "DequantizeLinear"
    assert any("left in fp32" in note for note in summary.notes)

    # The exported graph scored outside PyTorch gives the task's own test loop's mAP, detection for detection.
    module = load_task_module(checkpoint)
    torch_metrics = torch_test_metrics(module, datamodule)
    for key in ("test/map", "test/map_50", "test/map_75"):
        assert abs(summary.fp32.metrics[key] - torch_metrics[key]) < 1e-4, key
    images = torch.cat([batch[0] for batch in datamodule.test_dataloader()])
    with torch.no_grad():
        expected = module.student.postprocess(module.student(images))
    got = postprocess(module.student, *_run(fp32, images.numpy()), (64, 64))
    assert sum(len(d["labels"]) for d in expected) > 0
    for want, have in zip(expected, got, strict=True):
        assert torch.equal(want["labels"], have["labels"])
        torch.testing.assert_close(have["boxes"], want["boxes"], rtol=0, atol=1e-3)

    # INT8 against fp32, recomputed from the files.
    want, have = _run(fp32, images.numpy()), _run(int8, images.numpy())
    (matched, matched_back), (count, count_back) = agreement_counts("detection", want, have, module.student, (64, 64))
    assert min(matched / count, matched_back / count_back) >= DETECTION_AGREEMENT
    assert max(_relative(w, h) for w, h in zip(want, have, strict=True)) <= DETECTION_RELATIVE_ERROR
    assert summary.agreement >= DETECTION_AGREEMENT and summary.relative_error <= DETECTION_RELATIVE_ERROR
    for key in ("test/map", "test/map_50"):
        assert abs(summary.int8.metrics[key] - summary.fp32.metrics[key]) <= DETECTION_MAP, key


@pytest.mark.slow
def test_int8_keypoint_student_within_tolerance(tmp_path, shapes_keypoints_dir, trainer_kwargs):
    pl.seed_everything(0, verbose=False)  # weights and augmentation: the tolerances hold for one fixed student
    datamodule = keypoints.shapes(shapes_keypoints_dir)
    task = KeypointTask(student=keypoints.TINY_STUDENT, num_keypoints=4, lr=1e-2)
    checkpoint = _train(task, datamodule, trainer_kwargs, tmp_path, steps=60)
    spec = load_export_spec(checkpoint, image_size=keypoints.SHAPES_ARGS["input_size"])
    fp32 = export_onnx(spec, tmp_path / "kp.onnx").path
    summary = quantize_export(checkpoint, spec, fp32, datamodule, calibration_images=24, latency_runs=3)
    assert summary.task == "keypoints" and summary.excluded_nodes == 0
    assert {"test/pck@0.05", "test/pck@0.1", "test/ap"} <= set(summary.int8.metrics)

    # The ONNX heatmaps in the task's test loop (flip test and decoding included) give PyTorch's PCK and AP.
    torch_metrics = torch_test_metrics(load_task_module(checkpoint), datamodule)
    for key in ("test/pck@0.05", "test/pck@0.1", "test/ap"):
        assert abs(summary.fp32.metrics[key] - torch_metrics[key]) < 1e-5, key

    images = torch.cat([batch["image"] for batch in datamodule.test_dataloader()]).numpy()
    want, have = _run(fp32, images)[0], _run(tmp_path / "kp.int8.onnx", images)[0]
    close = np.abs(heatmap_peaks(want) - heatmap_peaks(have)).max(axis=-1) <= 1
    assert close.mean() >= PEAK_AGREEMENT and abs(close.mean() - summary.agreement) < 1e-6
    assert _relative(want, have) <= HEATMAP_RELATIVE_ERROR
    assert abs(summary.int8.metrics["test/pck@0.1"] - summary.fp32.metrics["test/pck@0.1"]) <= PCK


@pytest.mark.parametrize("topk", [3, 200], ids=["top-3-per-level", "top-200"])
def test_postprocess_of_exported_tensors_is_fcos_postprocessing(topk):
    """Score threshold, per-level top-k, clipping, class-wise NMS: the detections of the torch detector."""
    torch.manual_seed(0)
    detector = create_detector(detection.TINY_STUDENT, num_classes=2).eval()
    for parameter in detector.parameters():  # boxes that leave the image and scores above the threshold
        parameter.data.normal_(0.0, 0.2)
    detector.topk_candidates, detector.detections_per_img = topk, 20
    with torch.no_grad():
        output = detector(torch.rand(2, 3, 64, 64))
        scores = torch.sqrt(output.cls_logits.sigmoid() * output.bbox_ctrness.sigmoid())
        expected = detector.postprocess(output)
    got = postprocess(detector, detector.decode_boxes(output).numpy(), scores.numpy(), (64, 64))
    assert all(len(d["labels"]) for d in expected)
    for want, have in zip(expected, got, strict=True):
        assert torch.equal(want["labels"], have["labels"])
        torch.testing.assert_close(have["scores"], want["scores"])
        torch.testing.assert_close(have["boxes"], want["boxes"], rtol=0, atol=1e-4)


def test_heatmap_peaks_are_row_and_column():
    heatmaps = np.zeros((1, 2, 4, 5), np.float32)
    heatmaps[0, 0, 3, 1] = heatmaps[0, 1, 0, 4] = 1.0
    assert heatmap_peaks(heatmaps).tolist() == [[[3, 1], [0, 4]]]


def test_report_section_shows_the_summary_notes(tmp_path):
    variant = {"metrics": {"test/map": 0.5, "test/map/circle": 0.4}, "latency_ms": 2.0, "size_mb": 1.0}
    summary = {"fp32": variant, "int8": variant, "teacher": None, "agreement": 0.9, "relative_error": 0.01}
    summary |= {"calibration_images": 8, "threads": 1, "notes": ["113 node(s) left in fp32: the box decoding."]}
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.quantization.json").write_text(json.dumps(summary))
    markdown = to_markdown(quantization_section(SimpleNamespace(runs=[SimpleNamespace(name="det", path=tmp_path)])))
    assert "113 node(s) left in fp32: the box decoding." in markdown and "test/map" in markdown
