"""DataFreeClassification: synthesised training batches from the task's teacher, through a real Trainer."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import CSVLogger

from visiondistill.data import DataFreeClassification
from visiondistill.data.datafree import save_image_grid
from visiondistill.distill import LogitDistillation
from visiondistill.tasks import ClassificationTask

from .test_inversion import bn_teacher


class RecordBatches(pl.Callback):
    def __init__(self) -> None:
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append((batch[0].clone(), batch[1].clone()))


def test_training_batches_are_synthesised_from_the_teachers_statistics(trainer_kwargs, tmp_path):
    task = ClassificationTask(
        student={"name": "test_resnet"}, teacher={"name": "test_resnet"}, num_classes=3, task_weight=0.0
    )
    task.teacher.load_state_dict(bn_teacher().state_dict())  # a sharp teacher, so the target classes can be reached
    datamodule = DataFreeClassification(
        num_classes=3, image_size=32, batch_size=6, batches_per_epoch=2, iterations=15, bn_weight=1.0
    )
    recorder = RecordBatches()
    trainer_kwargs.update(logger=CSVLogger(tmp_path, name="run", version=""), callbacks=[recorder, LogitDistillation()])
    trainer = pl.Trainer(**trainer_kwargs)
    trainer.fit(task, datamodule=datamodule)

    assert len(recorder.batches) == 2
    (first, targets), (second, _) = recorder.batches
    assert first.shape == (6, 3, 32, 32) and not torch.equal(first, second)
    assert sorted(targets.tolist()) == [0, 0, 1, 1, 2, 2]  # the classes evenly spread
    with torch.no_grad():
        confidence = task.teacher.eval()(first).softmax(1)[range(6), targets].mean()
    assert confidence > 0.5, confidence  # 3 classes: chance is 1/3
    saved = np.asarray(Image.open(tmp_path / "run" / "data_free" / "epoch_000.png"))
    expected = save_image_grid(first, tmp_path / "first.png", datamodule.settings.mean, datamodule.settings.std)
    assert np.array_equal(saved, np.asarray(Image.open(expected)))  # the grid shows the epoch's first batch
    assert datamodule.class_names == ["0", "1", "2"]
    # task_weight 0: the cross-entropy on the target classes is off, the KD term alone teaches
    assert float(trainer.callback_metrics["train/task_loss"]) == 0.0
    assert float(trainer.callback_metrics["train/loss"]) > 0.0
