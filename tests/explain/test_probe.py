"""ProbeCallback's guard: a probe that draws from the global random generators leaves training bit-identical."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from visiondistill.explain.probe import ProbeBatch, ProbeCallback, model_input
from visiondistill.models import ClassifierSpec
from visiondistill.tasks import ClassificationTask


class _RandomProbe(ProbeCallback):
    """A probe that draws from torch's, NumPy's and Python's global generators, as a sampling explainer (noise
    tunnel, Monte-Carlo dropout) would."""

    folder = "random_probe"

    def __init__(self) -> None:
        super().__init__(num_samples=4, log_images=False)
        self.draws: list[tuple[float, float, float]] = []

    def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: ProbeBatch, out_dir: Path) -> None:
        self.draws.append((float(torch.rand(())), float(np.random.rand()), random.random()))
        noisy = batch.images + 0.1 * torch.randn_like(batch.images)
        logits = pl_module.student.eval()(model_input(noisy, pl_module.student))
        torch.nn.functional.dropout(logits, p=0.5, training=True)


class _UnguardedProbe(Callback):
    """The same probe with the train flags put back but the random states not: shows that its draws matter."""

    def __init__(self) -> None:
        self.inner = _RandomProbe()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with torch.inference_mode(False), torch.enable_grad():
            images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
            flags = {module: module.training for module in pl_module.modules()}
            self.inner.probe(trainer, pl_module, ProbeBatch(batch=None, images=images, indices=torch.arange(4)), Path())
            for module, flag in flags.items():
                module.training = flag


def _fit(root: Path, callbacks: list[Callback]) -> tuple[dict[str, torch.Tensor], tuple]:
    """Final student weights and global random states of a seeded two-epoch fit with dropout and shuffling."""
    pl.seed_everything(0, verbose=False)
    generator = torch.Generator().manual_seed(1)
    dataset = TensorDataset(torch.randn(16, 3, 32, 32, generator=generator), torch.arange(16) % 4)
    task = ClassificationTask(student=ClassifierSpec(name="test_resnet", kwargs={"drop_rate": 0.5}), num_classes=4)
    trainer = pl.Trainer(
        default_root_dir=root,
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    trainer.fit(task, DataLoader(dataset, batch_size=8, shuffle=True), DataLoader(dataset, batch_size=8))
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    return {k: v.clone() for k, v in task.student.state_dict().items()}, states


def test_probe_drawing_from_global_generators_leaves_training_bit_identical(tmp_path):
    without, states_without = _fit(tmp_path / "off", [])
    probe = _RandomProbe()
    with_probe, states_with = _fit(tmp_path / "on", [probe])
    assert len(probe.draws) == 2  # the probe ran after each epoch, and drew
    for key, value in without.items():
        assert torch.equal(value, with_probe[key]), key
    assert torch.equal(states_with[0], states_without[0])
    assert np.array_equal(states_with[1], states_without[1]) and states_with[2] == states_without[2]

    # The comparison is sensitive: the same draws, unguarded, change the trained weights.
    unguarded, _ = _fit(tmp_path / "unguarded", [_UnguardedProbe()])
    assert any(not torch.equal(value, unguarded[key]) for key, value in without.items())
