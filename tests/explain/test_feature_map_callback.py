from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from visiondistill.distill import LayerNotFoundError
from visiondistill.explain import FeatureMapCallback
from visiondistill.models import ClassifierSpec
from visiondistill.tasks import ClassificationTask

SIZE, CLASSES, PROBES = 48, 4, 8


def loader() -> DataLoader:
    """Images with a bright square in one quadrant, labelled by the quadrant."""
    generator = torch.Generator().manual_seed(0)
    images = 0.1 * torch.randn(16, 3, SIZE, SIZE, generator=generator)
    labels = torch.randint(0, CLASSES, (16,), generator=generator)
    half, side = SIZE // 2, SIZE // 4
    for i, label in enumerate(labels.tolist()):
        top, left = (label // 2) * half + side // 2, (label % 2) * half + side // 2
        images[i, :, top : top + side, left : left + side] += 1.0
    return DataLoader(TensorDataset(images, labels), batch_size=8)


def make_task(teacher: str | None = "test_efficientnet") -> ClassificationTask:
    return ClassificationTask(
        student=ClassifierSpec(name="test_resnet"),
        teacher=ClassifierSpec(name=teacher) if teacher else None,
        num_classes=CLASSES,
    )


def make_trainer(tmp_path: Path, callbacks: list, logger: bool = False) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(tmp_path, name="tb") if logger else False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )


def test_student_against_its_own_copy_agrees_perfectly(tmp_path):
    task = make_task(teacher="test_resnet")
    task.teacher.load_state_dict(task.student.state_dict())
    callback = FeatureMapCallback(student_layers=[-2, -1], teacher_layers=["layer3", -1], num_samples=PROBES)
    trainer = make_trainer(tmp_path, [callback], logger=True)
    (results,) = trainer.validate(task, loader())
    for stage in ("layer3", "-1"):
        assert results[f"val/attention/at_cosine/{stage}"] == pytest.approx(1.0, abs=1e-5)
        assert results[f"val/attention/at_distance/{stage}"] == pytest.approx(0.0, abs=1e-7)
        assert results[f"val/attention/cka/{stage}"] == pytest.approx(1.0, abs=1e-5)

    out = Path(trainer.log_dir) / "attention" / "epoch_000"
    assert sorted(p.name for p in out.iterdir()) == ["-1.png", "layer3.png", "maps.npz"]
    data = np.load(out / "maps.npz")
    assert data["images"].shape == (PROBES, 3, SIZE, SIZE) and list(data["stages"]) == ["layer3", "-1"]
    assert data["teacher_layer3"].shape == data["student_layer3"].shape == (PROBES, SIZE // 16, SIZE // 16)
    np.testing.assert_allclose(data["teacher_-1"], data["student_-1"], atol=1e-6)

    events = EventAccumulator(trainer.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert {"val/attention/grid/layer3", "val/attention/grid/-1"} <= set(events.Tags()["images"])


class _StateProbe(Callback):
    """Records flags, gradients and RNG state around the callback under test (placed before and after it)."""

    def __init__(self, before: _StateProbe | None = None) -> None:
        self.before, self.checked = before, 0

    def on_validation_epoch_end(self, trainer, pl_module):
        if self.before is None:
            with torch.inference_mode(False):
                pl_module.student.train()
                for i, parameter in enumerate(pl_module.student.parameters()):
                    parameter.grad = torch.ones_like(parameter) * i if i % 3 else None
        state = {
            "flags": {name: module.training for name, module in pl_module.named_modules()},
            "grads": {name: p.grad for name, p in pl_module.named_parameters()},
            "rng": (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()),
        }
        if self.before is None:
            self.state = state
            return
        expected = self.before.state
        assert state["flags"] == expected["flags"]
        assert all(state["grads"][name] is grad for name, grad in expected["grads"].items())
        assert torch.equal(state["rng"][0], expected["rng"][0]) and np.array_equal(state["rng"][1], expected["rng"][1])
        assert state["rng"][2] == expected["rng"][2]
        pl_module.zero_grad(set_to_none=True)
        self.checked += 1


def test_fit_logs_finite_metrics_and_leaves_training_untouched(tmp_path):
    before = _StateProbe()
    after = _StateProbe(before)
    callback = FeatureMapCallback(student_layers=(-3, -2), teacher_layers=(-3, -2), num_samples=PROBES)
    trainer = make_trainer(tmp_path, [before, callback, after])
    trainer.fit(make_task(), loader(), loader())
    assert after.checked == 1
    for stage in ("-3", "-2"):
        distance = float(trainer.logged_metrics[f"val/attention/at_distance/{stage}"])
        cosine = float(trainer.logged_metrics[f"val/attention/at_cosine/{stage}"])
        cka = float(trainer.logged_metrics[f"val/attention/cka/{stage}"])
        assert math.isfinite(distance) and distance >= 0
        assert 0.0 <= cosine <= 1.0 + 1e-6 and 0.0 <= cka <= 1.0 + 1e-6
    assert (tmp_path / "attention" / "epoch_000" / "-2.png").exists()


def test_without_teacher_warns_and_does_nothing(tmp_path):
    trainer = make_trainer(tmp_path, [FeatureMapCallback()])
    with pytest.warns(UserWarning, match="no teacher"):
        trainer.validate(make_task(teacher=None), loader())
    assert not any(key.startswith("val/attention") for key in trainer.logged_metrics)
    assert not (tmp_path / "attention").exists()


def test_bad_layers_fail_early(tmp_path):
    with pytest.raises(ValueError, match="matched pairwise"):
        FeatureMapCallback(student_layers=[-2, -1], teacher_layers=[-1])
    with pytest.raises(ValueError, match="repeat a layer"):
        FeatureMapCallback(student_layers=[-2, -1], teacher_layers=[-1, -1])
    with pytest.raises(ValueError, match="every_n_epochs"):
        FeatureMapCallback(every_n_epochs=0)
    trainer = make_trainer(tmp_path, [FeatureMapCallback(student_layers="layer9")])
    with pytest.raises(LayerNotFoundError, match="student layer 'layer9'"):
        trainer.validate(make_task(), loader())
