"""`visiondistill export` of a keypoint student: the heatmaps from onnxruntime equal PyTorch's."""

from __future__ import annotations

import numpy as np
import onnxruntime
import torch

from visiondistill.cli import main
from visiondistill.reporting.loader import load_task_module
from visiondistill.tasks import KeypointTask

from ..support.keypoints import TINY_STUDENT


def test_keypoint_student_round_trip(tmp_path, capsys):
    torch.manual_seed(0)
    task = KeypointTask(student=TINY_STUDENT, num_keypoints=4)
    for parameter in task.parameters():  # away from the near-zero initialisation, so the comparison means something
        parameter.data.normal_(0.0, 0.1)
    hparams = {**dict(task.hparams), "_class_path": "visiondistill.tasks.KeypointTask"}
    checkpoint = tmp_path / "keypoints.ckpt"
    torch.save(
        {
            "hyper_parameters": hparams,
            "state_dict": task.state_dict(),
            "datamodule_hyper_parameters": {"input_size": 48},
        },
        checkpoint,
    )
    assert main(["export", str(checkpoint), "--format", "onnx"]) == 0
    assert "max |diff|" in capsys.readouterr().out
    model = load_task_module(checkpoint).student
    images = torch.rand(3, 3, 48, 48)  # the crop side from the checkpoint's data settings, another batch size
    with torch.no_grad():
        expected = model(images).numpy()
    session = onnxruntime.InferenceSession(str(checkpoint.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["heatmaps"]
    got = session.run(None, {"image": images.numpy()})[0]
    assert got.shape == (3, 4, 12, 12)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
