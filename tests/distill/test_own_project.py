"""The README's "In your own Lightning project" example, as written there, on a torchvision and a timm pair; and the
explanation callbacks' default layers (stage indices) on torchvision models."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader

from visiondistill.distill import AttentionTransfer, FeatureHint, LogitDistillation, distillation_loss
from visiondistill.explain import FeatureMapCallback, GradCAMCallback
from visiondistill.models import ClassifierSpec
from visiondistill.tasks import ClassificationTask

from ..conftest import quadrant_images

CLASSES = 4


class MyDistiller(pl.LightningModule):  # copied from README.md, "In your own Lightning project"
    def __init__(self, student, teacher):
        super().__init__()
        self.student, self.teacher = student, teacher  # the callbacks freeze the teacher

    def training_step(self, batch, batch_idx):
        images, targets = batch
        logits = self.student(images)
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        return F.cross_entropy(logits, targets) + distillation_loss(self, batch, logits, teacher_logits)

    def configure_optimizers(self):  # self.parameters() includes the connectors
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def _torchvision_pair():
    return (
        torchvision.models.mobilenet_v3_small(weights=None, num_classes=CLASSES),
        torchvision.models.resnet18(weights=None, num_classes=CLASSES),
    )


def _timm_pair():
    return timm.create_model("test_resnet", num_classes=CLASSES), timm.create_model("test_efficientnet", num_classes=4)


@pytest.mark.parametrize("pair", [_torchvision_pair, _timm_pair], ids=["torchvision", "timm"])
def test_readme_own_project_example_trains(pair, trainer_kwargs):
    torch.manual_seed(0)
    student, teacher = pair()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    module = MyDistiller(student, teacher)
    callbacks = [LogitDistillation(), AttentionTransfer([-1], [-1]), FeatureHint(-2, -2)]
    trainer = pl.Trainer(callbacks=callbacks, **{**trainer_kwargs, "max_steps": 2})
    trainer.fit(module, DataLoader(quadrant_images(n=8, size=64), batch_size=4))
    metrics = trainer.callback_metrics
    for name in ("kd", "attention_transfer", "hint"):
        assert torch.isfinite(metrics[f"train/distill/{name}"]) and metrics[f"train/distill/{name}"] > 0
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_explanation_callbacks_default_layers_on_torchvision_models(tmp_path: Path, trainer_kwargs):
    task = ClassificationTask(
        student=ClassifierSpec(name="torchvision/mobilenet_v3_small"),
        teacher=ClassifierSpec(name="resnet18", source="torchvision"),
        num_classes=CLASSES,
    )
    callbacks = [
        GradCAMCallback(num_samples=4, log_images=False, save_dir=tmp_path / "cam"),
        FeatureMapCallback(num_samples=4, log_images=False, save_dir=tmp_path / "att"),
    ]
    trainer = pl.Trainer(callbacks=callbacks, **{**trainer_kwargs, "limit_val_batches": 1})
    (results,) = trainer.validate(task, DataLoader(quadrant_images(n=8, size=64), batch_size=4))
    assert -1.0 <= results["val/saliency/pearson"] <= 1.0
    assert 0.0 <= results["val/attention/cka/-1"] <= 1.0 + 1e-6
