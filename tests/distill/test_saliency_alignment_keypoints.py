"""SaliencyAlignment on a keypoint model: heatmap-peak targets, and the term trains the student."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from visiondistill.distill import SaliencyAlignment
from visiondistill.tasks import KeypointTask

from ..support.keypoints import TINY_STUDENT, TINY_TEACHER, shapes, trainer


class _Spy(pl.Callback):
    def __init__(self) -> None:
        self.norms: dict[str, float] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.norms = {n: float(p.grad.norm()) for n, p in pl_module.named_parameters() if p.grad is not None}


def test_gradients_reach_the_student_through_the_alignment_term(shapes_keypoints_dir, tmp_path):
    torch.manual_seed(0)
    task = KeypointTask(student=TINY_STUDENT, teacher=TINY_TEACHER, num_keypoints=4, task_weight=0.0)
    spy = _Spy()
    run = trainer(tmp_path, max_steps=1, limit_val_batches=0, callbacks=[SaliencyAlignment("head", "head"), spy])
    run.fit(task, shapes(shapes_keypoints_dir))
    backbone = [v for k, v in spy.norms.items() if k.startswith("student.backbone.")]
    assert backbone and max(backbone) > 0, "with the task loss off, only the alignment term trains the backbone"
    assert not any(k.startswith("teacher.") for k in spy.norms)
