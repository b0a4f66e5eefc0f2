"""`visiondistill export` of a detection student: dense boxes and scores from onnxruntime equal PyTorch's."""

from __future__ import annotations

import numpy as np
import onnxruntime
import torch

from visiondistill.cli import main
from visiondistill.reporting.loader import load_task_module
from visiondistill.tasks import DetectionTask

from ..support.detection import TINY_STUDENT


def test_detection_student_round_trip(tmp_path, capsys):
    torch.manual_seed(0)
    task = DetectionTask(student=TINY_STUDENT, num_classes=2)
    hparams = {**dict(task.hparams), "_class_path": "visiondistill.tasks.DetectionTask"}
    checkpoint = tmp_path / "detector.ckpt"
    torch.save({"hyper_parameters": hparams, "state_dict": task.state_dict()}, checkpoint)
    assert main(["export", str(checkpoint), "--format", "onnx", "--image-size", "64"]) == 0
    assert "max |diff|" in capsys.readouterr().out
    detector = load_task_module(checkpoint).student
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        output = detector(images)
        boxes = detector.decode_boxes(output).numpy()
        scores = torch.sqrt(output.cls_logits.sigmoid() * output.bbox_ctrness.sigmoid()).numpy()
    session = onnxruntime.InferenceSession(str(checkpoint.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores"]
    got_boxes, got_scores = session.run(None, {"image": images.numpy()})
    assert got_boxes.shape == (2, output.cls_logits.shape[1], 4) and got_scores.shape == (
        2,
        output.cls_logits.shape[1],
        2,
    )
    np.testing.assert_allclose(got_boxes, boxes, rtol=0, atol=1e-4)
    np.testing.assert_allclose(got_scores, scores, rtol=0, atol=1e-4)
    # The exported scores rank detections as the PyTorch post-processing does: its top detection is the top score.
    top = detector.postprocess(output)[0]
    if len(top["scores"]):
        assert abs(float(top["scores"].max()) - float(scores[0].max())) < 1e-4
