"""`visiondistill export` of a multi-task student: both heads from onnxruntime equal PyTorch's."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytorch_lightning as pl
import torch

from visiondistill.cli import main
from visiondistill.distill import LogitDistillation
from visiondistill.reporting.loader import load_task_module
from visiondistill.tasks import MultiTaskModule

from ..support.multitask import multitask_loader, tiny_multitask


def test_multitask_student_round_trip(tmp_path, capsys, trainer_kwargs):
    torch.manual_seed(0)
    module = tiny_multitask()  # with both teachers: the checkpoint records them, the loader leaves them out
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[LogitDistillation(teacher="cls_t")], max_steps=1)
    trainer.fit(module, multitask_loader())
    checkpoint = tmp_path / "multitask.ckpt"
    trainer.save_checkpoint(checkpoint)
    loaded = load_task_module(checkpoint)
    assert isinstance(loaded, MultiTaskModule) and loaded.teachers is None
    for key, value in module.student.state_dict().items():
        assert torch.equal(value, loaded.student.state_dict()[key]), key
    assert main(["export", str(checkpoint), "--format", "onnx", "--image-size", "32"]) == 0
    assert "max |diff|" in capsys.readouterr().out
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = loaded.student(images)
    session = onnxruntime.InferenceSession(str(checkpoint.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["cls", "seg"]
    cls, seg = session.run(None, {"image": images.numpy()})
    assert cls.shape == (2, 3) and seg.shape == (2, 4, 32, 32)
    np.testing.assert_allclose(cls, expected["cls"].numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(seg, expected["seg"].numpy(), rtol=0, atol=1e-4)
