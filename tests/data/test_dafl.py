"""DAFL: the generator's loss terms against hand formulas, its training step, and its datamodule in a real Trainer."""

from __future__ import annotations

import math

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import CSVLogger
from torch import nn

from visiondistill.data import DAFL, DAFLDataFreeClassification, DAFLSettings
from visiondistill.data.dafl import activation_loss, information_entropy_loss, one_hot_loss
from visiondistill.data.datafree import save_image_grid
from visiondistill.distill import LogitDistillation
from visiondistill.tasks import ClassificationTask

from .test_datafree import RecordBatches
from .test_inversion import bn_teacher


def test_one_hot_loss_is_the_cross_entropy_against_the_own_argmax():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    by_hand = []
    for row in logits.tolist():
        top = max(range(3), key=lambda k: row[k])
        by_hand.append(-(row[top] - math.log(sum(math.exp(v) for v in row))))
    assert math.isclose(float(one_hot_loss(logits)), sum(by_hand) / 2, rel_tol=1e-6)


def test_activation_loss_is_minus_the_mean_absolute_feature():
    features = torch.tensor([[1.0, -3.0], [0.0, 2.0]])
    assert float(activation_loss(features)) == -(1 + 3 + 0 + 2) / 4


def test_information_entropy_loss_is_the_negative_entropy_of_the_mean_prediction_in_log10():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # softmax rows (3/4, 1/4) and (1/2, 1/2)
    p = (5 / 8, 3 / 8)  # their mean
    by_hand = sum(v * math.log10(v) for v in p)
    assert math.isclose(float(information_entropy_loss(logits)), by_hand, rel_tol=1e-6)
    # Lowest when the batch covers the classes evenly, even if every single prediction is confident.
    balanced = torch.tensor([[9.0, 0.0], [0.0, 9.0]])
    assert float(information_entropy_loss(balanced)) < float(information_entropy_loss(logits))


def test_total_is_the_weighted_sum_and_the_activation_reads_the_classifiers_input():
    teacher = bn_teacher()
    dafl = DAFL(32, settings=DAFLSettings(activation_weight=0.3, entropy_weight=2.0, one_hot_weight=0.5))
    images = torch.randn(4, 3, 32, 32)
    terms = dafl.losses(teacher, images)
    with torch.no_grad():
        features = teacher.forward_head(teacher.forward_features(images), pre_logits=True)
        logits = teacher(images)
    assert torch.allclose(terms["activation"], -features.abs().mean())
    assert torch.allclose(terms["one_hot"], one_hot_loss(logits))
    assert torch.allclose(terms["entropy"], information_entropy_loss(logits))
    expected = 0.5 * terms["one_hot"] + 0.3 * terms["activation"] + 2.0 * terms["entropy"]
    assert torch.allclose(terms["total"], expected)


def test_a_step_trains_the_generator_only_and_lowers_its_loss():
    teacher = bn_teacher().train()  # its mode must come back
    frozen = {name: value.clone() for name, value in teacher.state_dict().items()}
    dafl = DAFL(32, settings=DAFLSettings(latent_dim=16, hidden_channels=16, lr=0.02), seed=0)
    before = [p.clone() for p in dafl.generator.parameters()]
    z = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    totals = [dafl.step(teacher, z)[1]["total"] for _ in range(25)]
    assert teacher.training
    assert all(torch.equal(frozen[name], value) for name, value in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(before, dafl.generator.parameters(), strict=True))
    assert np.mean(totals[-5:]) < np.mean(totals[:5]) - 0.05, totals


def test_a_teacher_without_batch_norm_is_fine():
    teacher = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    images, terms = DAFL(16, settings=DAFLSettings(latent_dim=4, hidden_channels=4)).step(teacher, torch.randn(3, 4))
    assert images.shape == (3, 3, 16, 16) and terms["activation"] < 0


def test_the_datamodule_feeds_generated_batches_to_a_real_trainer_and_saves_the_generator(trainer_kwargs, tmp_path):
    task = ClassificationTask(
        student={"name": "test_resnet"}, teacher={"name": "test_resnet"}, num_classes=3, task_weight=0.0
    )
    task.teacher.load_state_dict(bn_teacher().state_dict())
    datamodule = DAFLDataFreeClassification(
        num_classes=3, image_size=32, batch_size=6, batches_per_epoch=2, latent_dim=8, hidden_channels=8
    )
    initial = {k: v.clone() for k, v in datamodule.dafl.generator.state_dict().items()}
    recorder = RecordBatches()
    trainer_kwargs.update(
        max_epochs=2, logger=CSVLogger(tmp_path, name="run", version=""), callbacks=[recorder, LogitDistillation()]
    )
    trainer = pl.Trainer(**trainer_kwargs)
    trainer.fit(task, datamodule=datamodule)

    assert len(recorder.batches) == 4
    (first, targets), (second, _) = recorder.batches[:2]
    assert first.shape == (6, 3, 32, 32) and not torch.equal(first, second)
    with torch.no_grad():
        assert torch.equal(targets, task.teacher.eval()(first).argmax(1))  # the teacher's classes for the images
    for epoch in (0, 1):  # a grid per epoch, of that epoch's first batch
        saved = np.asarray(Image.open(tmp_path / "run" / "data_free" / f"epoch_{epoch:03d}.png"))
        normalisation = datamodule.settings.mean, datamodule.settings.std
        expected = save_image_grid(recorder.batches[2 * epoch][0], tmp_path / f"{epoch}.png", *normalisation)
        assert np.array_equal(saved, np.asarray(Image.open(expected)))
    trained = datamodule.dafl.generator.state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)  # the generator trained alongside
    assert float(trainer.callback_metrics["train/task_loss"]) == 0.0
    assert float(trainer.callback_metrics["train/loss"]) > 0.0

    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    restored = DAFLDataFreeClassification(
        num_classes=3, image_size=32, batch_size=6, batches_per_epoch=2, latent_dim=8, hidden_channels=8, seed=5
    )
    restored.load_state_dict(torch.load(path, weights_only=False)["DAFLDataFreeClassification"])
    assert all(torch.equal(trained[k], v) for k, v in restored.dafl.generator.state_dict().items())
