"""A distilled training step reads no tensor value on the host from visiondistill's own code (issue 16, item 3).

On an accelerator every such read (``.item()``, ``float()``, ``int()``, ``bool()``, ``.tolist()``, ``.cpu()``,
``.numpy()``) waits for the device to finish the step so far. Logged losses stay tensors (Lightning reduces them at
the epoch's end); the adaptive weights' loss balance sums shares on the device. Here, on the CPU, every such call made
directly by visiondistill code between ``on_train_batch_start`` and ``on_train_batch_end`` is recorded (calls from
torch, torchvision or Lightning are not ours to change). Not covered: `FeatureImitation` (FGD's box masks are built
on the host, as in the reference) and `TeacherOutputCache` (it looks up the batch's view ids on the host).
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from visiondistill.core.errors import ConfigError
from visiondistill.data import CocoDetection
from visiondistill.distill import (
    AdaptiveDistillationWeights,
    AttentionTransfer,
    ChannelWiseDistillation,
    DecoupledDistillation,
    DetectionLogitDistillation,
    LogitDistillation,
    PixelwiseDistillation,
)
from visiondistill.tasks import ClassificationTask, DetectionTask, SegmentationTask

from ..conftest import quadrant_images
from ..support import detection as tiny_detection
from ..support.segmentation import TINY_STUDENT, TINY_TEACHER, square_masks

READS = ("item", "__float__", "__int__", "__bool__", "tolist", "cpu", "numpy")
PACKAGE = str(Path(__file__).resolve().parents[2] / "visiondistill")


class HostReads(pl.Callback):
    """Records the host reads visiondistill's code makes during training steps: (method, file, line) -> count."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: collections.Counter = collections.Counter()
        self.active = False
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self._recording(name, getattr(torch.Tensor, name)))

    def _recording(self, name, method):
        def read(tensor, *args, **kwargs):
            if self.active:
                caller = sys._getframe(1).f_code.co_filename
                if caller.startswith(PACKAGE):
                    self.reads[(name, caller.removeprefix(PACKAGE), sys._getframe(1).f_lineno)] += 1
            return method(tensor, *args, **kwargs)

        return read

    def on_train_batch_start(self, *args) -> None:
        self.active = True


class StopRecording(pl.Callback):
    """Last on the trainer: the batch-end hooks of every other callback are recorded too."""

    def __init__(self, probe: HostReads) -> None:
        self.probe = probe

    def on_train_batch_end(self, *args) -> None:
        self.probe.active = False


def fit(task, callbacks, trainer_kwargs, monkeypatch, **data) -> HostReads:
    probe = HostReads(monkeypatch)
    kwargs = {**trainer_kwargs, "limit_val_batches": 0, "log_every_n_steps": 1000}
    pl.Trainer(**kwargs, callbacks=[probe, *callbacks, StopRecording(probe)]).fit(task, **data)
    return probe


def test_a_classification_step_with_kd_dkd_at_and_loss_balance_reads_nothing(trainer_kwargs, monkeypatch):
    task = ClassificationTask(student={"name": "test_resnet"}, teacher={"name": "test_resnet"}, num_classes=4)
    callbacks = [
        LogitDistillation(),
        DecoupledDistillation(),
        AttentionTransfer(),
        AdaptiveDistillationWeights(balance=["kd"]),
    ]
    probe = fit(task, callbacks, trainer_kwargs, monkeypatch, train_dataloaders=DataLoader(quadrant_images(16), 8))
    assert not probe.reads, dict(probe.reads)


def test_a_segmentation_step_with_pixelwise_and_cwd_reads_nothing(trainer_kwargs, monkeypatch):
    task = SegmentationTask(student=TINY_STUDENT, teacher=TINY_TEACHER, num_classes=3)
    callbacks = [PixelwiseDistillation(), ChannelWiseDistillation()]
    probe = fit(task, callbacks, trainer_kwargs, monkeypatch, train_dataloaders=DataLoader(square_masks(), 8))
    assert not probe.reads, dict(probe.reads)


def test_a_detection_step_with_logit_kd_reads_nothing(tmp_path, trainer_kwargs, monkeypatch):
    for split in ("train", "val"):
        tiny_detection.square_split(tmp_path, split, 8, 0)
    data = CocoDetection(str(tmp_path), batch_size=4, num_workers=0)
    task = DetectionTask(student=tiny_detection.TINY_STUDENT, teacher=tiny_detection.TINY_TEACHER, num_classes=2)
    probe = fit(task, [DetectionLogitDistillation()], trainer_kwargs, monkeypatch, datamodule=data)
    assert not probe.reads, dict(probe.reads)  # the label check ran on the host copy, before the transfer


def test_detection_labels_outside_the_classes_are_still_refused_by_name(tmp_path, trainer_kwargs):
    for split in ("train", "val"):
        tiny_detection.square_split(tmp_path, split, 4, 0)
    data = CocoDetection(str(tmp_path), batch_size=4, num_workers=0)
    task = DetectionTask(student=tiny_detection.TINY_STUDENT, num_classes=1)
    task.check_datamodule = lambda *args, **kwargs: None  # past the setup check: the batch check must catch it
    with pytest.raises(ConfigError, match=r"has labels \[1\] but the model has 1 classes.*num_classes"):
        pl.Trainer(**{**trainer_kwargs, "limit_val_batches": 0}).fit(task, datamodule=data)
