"""The README's "In your own Lightning project" example, read from README.md and run as written, on a torchvision and a
timm pair; and the explanation callbacks' default layers (stage indices) on torchvision models."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import timm
import torch
import torchvision
from torch.utils.data import DataLoader

from visiondistill.distill import AttentionTransfer, FeatureHint, LogitDistillation
from visiondistill.explain import FeatureMapCallback, GradCAMCallback
from visiondistill.models import ClassifierSpec
from visiondistill.tasks import ClassificationTask

from ..conftest import quadrant_images

CLASSES = 4


def _readme_example() -> tuple[type, str]:
    """The README's example, run as written: its LightningModule class and the source of its callback list."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text[text.index("### In your own Lightning project") :]
    code = section[section.index("```python") + len("```python") : section.index("```", section.index("```python") + 9)]
    body, _, trainer_line = code.strip().rpartition("\n")
    assert trainer_line.startswith("trainer = pl.Trainer(callbacks="), trainer_line
    namespace: dict = {}
    exec(compile(body, "README.md", "exec"), namespace)  # noqa: S102 - our own README's example
    return namespace["MyDistiller"], trainer_line[len("trainer = pl.Trainer(callbacks=") : -1]


MyDistiller, README_CALLBACKS = _readme_example()


def _torchvision_pair():
    return (
        torchvision.models.mobilenet_v3_small(weights=None, num_classes=CLASSES),
        torchvision.models.resnet18(weights=None, num_classes=CLASSES),
    )


def _timm_pair():
    return timm.create_model("test_resnet", num_classes=CLASSES), timm.create_model(
        "test_efficientnet", num_classes=CLASSES
    )


@pytest.mark.parametrize("pair", [_torchvision_pair, _timm_pair], ids=["torchvision", "timm"])
def test_readme_own_project_example_trains(pair, trainer_kwargs):
    torch.manual_seed(0)
    student, teacher = pair()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    module = MyDistiller(student, teacher)
    callbacks = eval(README_CALLBACKS, {"LogitDistillation": LogitDistillation, "AttentionTransfer": AttentionTransfer})
    assert [type(c) for c in callbacks] == [LogitDistillation, AttentionTransfer]
    callbacks.append(FeatureHint(-2, -2))  # a connector sized on a probed stage, too
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
