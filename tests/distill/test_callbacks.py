"""The distillation callback stack, with a real Trainer on tiny timm models."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from visiondistill.distill import (
    AttentionTransfer,
    DecoupledDistillation,
    FeatureHint,
    LayerNotFoundError,
    LogitDistillation,
    ProtocolError,
    ShapeMismatchError,
    distillation_loss,
)
from visiondistill.distill.losses import attention_transfer_loss, kd_loss
from visiondistill.models import ClassifierSpec
from visiondistill.tasks import ClassificationTask


def make_task(**kwargs) -> ClassificationTask:
    torch.manual_seed(0)
    return ClassificationTask(
        student=ClassifierSpec(name="test_resnet"),
        teacher=ClassifierSpec(name="test_efficientnet"),
        num_classes=4,
        **kwargs,
    )


def teacher_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class ModeSpy(pl.Callback):
    """Records whether any teacher module was in train mode during a training batch."""

    def __init__(self) -> None:
        self.teacher_training_seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.teacher_training_seen.append(any(m.training for m in pl_module.teacher.modules()))


def test_teacher_frozen_and_bit_identical_across_epochs(tiny_loader, trainer_kwargs):
    task = make_task()
    # Make BatchNorm running stats sensitive: they would move at once if the teacher ran in train mode.
    before = teacher_state(task.teacher)
    spy = ModeSpy()
    trainer = pl.Trainer(
        **{**trainer_kwargs, "max_epochs": 3},
        callbacks=[LogitDistillation(), AttentionTransfer([-2, -1], [-2, -1]), spy],
    )
    trainer.fit(task, tiny_loader, tiny_loader)
    after = task.teacher.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"teacher tensor {key} changed"
    assert spy.teacher_training_seen and not any(spy.teacher_training_seen)
    assert not any(p.requires_grad for p in task.teacher.parameters())
    assert all(p.grad is None for p in task.teacher.parameters())


class PlainDistiller(pl.LightningModule):
    """A LightningModule from 'another project': only the protocol, nothing from visiondistill's tasks."""

    def __init__(self) -> None:
        super().__init__()
        self.student = timm.create_model("test_resnet", num_classes=4)
        self.teacher = timm.create_model("test_efficientnet", num_classes=4)  # not frozen by the module

    def training_step(self, batch, batch_idx):
        images, targets = batch
        logits = self.student(images)
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        return F.cross_entropy(logits, targets) + distillation_loss(self, batch, logits, teacher_logits)

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", F.cross_entropy(self.student(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_callbacks_work_on_a_plain_lightning_module(tiny_loader, trainer_kwargs):
    torch.manual_seed(0)
    module = PlainDistiller()
    before = teacher_state(module.teacher)
    student_before = teacher_state(module.student)
    hint = FeatureHint("layer3", -2, weight=1.0)
    trainer = pl.Trainer(
        **{**trainer_kwargs, "max_epochs": 2}, callbacks=[LogitDistillation(), AttentionTransfer(), hint]
    )
    trainer.fit(module, tiny_loader, tiny_loader)
    assert all(torch.equal(v, module.teacher.state_dict()[k]) for k, v in before.items())
    assert not module.teacher.training and not any(p.requires_grad for p in module.teacher.parameters())
    assert any(not torch.equal(v, module.student.state_dict()[k]) for k, v in student_before.items())
    # The connector was created on the module, so the module's own optimizer trained it.
    assert "hint" in module.distill_adapters
    logged = trainer.logged_metrics
    for name in ("kd", "attention_transfer", "hint"):
        assert torch.isfinite(logged[f"train/distill/{name}_epoch"])


class Recorder(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.loss = outputs["loss"].detach()


def test_distillation_loss_is_the_weighted_sum_of_reference_terms(tiny_loader):
    task = make_task()
    kd, at = LogitDistillation(temperature=3.0, weight=0.5), AttentionTransfer([-1], [-1], weight=100.0)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, callbacks=[kd, at])
    trainer.strategy.connect(task)
    trainer._data_connector.attach_data(task, train_dataloaders=tiny_loader)
    for callback in (kd, at):
        callback.setup(trainer, task, "fit")
    images, targets = next(iter(tiny_loader))
    with torch.no_grad():
        s_feat = task.student.forward_features(images)
        t_feat = task.teacher.forward_features(images)
    student_out = task.student(images)
    teacher_out = task.teacher(images)
    task.log = lambda *args, **kwargs: None  # logging needs a running loop; the value is what we check
    total = distillation_loss(task, (images, targets), student_out, teacher_out)
    expected = 0.5 * kd_loss(student_out, teacher_out, 3.0) + 100.0 * attention_transfer_loss(s_feat, t_feat)
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=1e-6)


def test_duplicate_callbacks_get_unique_names(tiny_loader, trainer_kwargs):
    task = make_task()
    first, second = AttentionTransfer([-1], [-1]), AttentionTransfer([-2], [-2])
    trainer = pl.Trainer(**trainer_kwargs, limit_train_batches=2, callbacks=[first, second])
    trainer.fit(task, tiny_loader)
    assert (first.name, second.name) == ("attention_transfer", "attention_transfer_1")
    assert "train/distill/attention_transfer_1_epoch" in trainer.logged_metrics


def test_dkd_warmup_scales_the_weight(tiny_loader, trainer_kwargs):
    task = make_task()
    dkd = DecoupledDistillation(warmup_epochs=4, weight=2.0)
    trainer = pl.Trainer(**{**trainer_kwargs, "max_epochs": 1}, limit_train_batches=1, callbacks=[dkd])
    trainer.fit(task, tiny_loader)
    trainer.fit_loop.epoch_progress.current.completed = 0  # the first epoch, as mdistiller's epoch 1
    assert dkd.effective_weight(trainer) == pytest.approx(2.0 * 1 / 4)
    trainer.fit_loop.epoch_progress.current.completed = 10
    assert dkd.effective_weight(trainer) == pytest.approx(2.0)


def test_hint_connector_is_trained_checkpointed_and_restored(tiny_loader, trainer_kwargs, tmp_path):
    task = make_task()
    trainer = pl.Trainer(**{**trainer_kwargs, "max_epochs": 1}, callbacks=[FeatureHint("layer3", "blocks.3")])
    trainer.fit(task, tiny_loader)
    connector = task.distill_adapters["hint"]
    assert connector.conv.in_channels == 192 and connector.conv.out_channels == 48
    path = tmp_path / "hint.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert any(k.startswith("distill_adapters.hint.") for k in checkpoint["state_dict"])
    assert not any(k.startswith("teacher.") for k in checkpoint["state_dict"]), "teacher weights bloat the ckpt"

    class StartSpy(pl.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            self.weight = pl_module.distill_adapters["hint"].conv.weight.detach().clone()

    resumed, spy = make_task(), StartSpy()
    trainer = pl.Trainer(**{**trainer_kwargs, "max_epochs": 2}, callbacks=[FeatureHint("layer3", "blocks.3"), spy])
    trainer.fit(resumed, tiny_loader, ckpt_path=path)
    assert trainer.current_epoch == 2
    torch.testing.assert_close(spy.weight, checkpoint["state_dict"]["distill_adapters.hint.conv.weight"])
    assert not torch.equal(resumed.distill_adapters["hint"].conv.weight, spy.weight), "connector not optimised"


def test_hint_connector_resizes_integer_factors():
    from visiondistill.distill import HintConnector

    down = HintConnector.for_shapes((2, 8, 8, 8), (2, 16, 4, 4), "a", "b")
    assert down(torch.randn(2, 8, 8, 8)).shape == (2, 16, 4, 4)
    up = HintConnector.for_shapes((2, 8, 2, 2), (2, 16, 4, 4), "a", "b")
    assert up(torch.randn(2, 8, 2, 2)).shape == (2, 16, 4, 4)


def test_unknown_layer_name_lists_valid_ones(tiny_loader, trainer_kwargs):
    task = make_task()
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[AttentionTransfer(["layer9"], [-1])])
    with pytest.raises(LayerNotFoundError, match=r"student layer 'layer9' not found.*'layer\d'.*Feature stages"):
        trainer.fit(task, tiny_loader)


def test_stage_index_out_of_range_lists_valid_ones(tiny_loader, trainer_kwargs):
    task = make_task()
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[AttentionTransfer([-1], [7])])
    with pytest.raises(LayerNotFoundError, match=r"teacher stage index 7 is out of range.*-5\.\.4.*blocks\.4"):
        trainer.fit(task, tiny_loader)


def test_irreconcilable_feature_shapes_fail_at_setup(tiny_loader, trainer_kwargs):
    task = make_task()
    # 32-px input: student act1 is 16×16 (/2), teacher blocks.2 is 4×4 (/8): factor 4 works;
    # the student's stem is 16×16 and a 3×3 pooled teacher map has no integer ratio.
    task.teacher.blocks.add_module("odd", nn.AdaptiveAvgPool2d(3))
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[FeatureHint("act1", "blocks.odd")])
    with pytest.raises(ShapeMismatchError, match=r"'act1'.*\(1, 32, 16, 16\).*'blocks.odd'.*\(1, 64, 3, 3\)"):
        trainer.fit(task, tiny_loader)


def test_callback_without_teacher_fails_early(tiny_loader, trainer_kwargs):
    task = ClassificationTask(student=ClassifierSpec(name="test_resnet"), num_classes=4)
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[LogitDistillation()])
    with pytest.raises(ProtocolError, match="LogitDistillation needs a teacher"):
        trainer.fit(task, tiny_loader)


def test_logit_shape_mismatch_is_named(tiny_loader, trainer_kwargs):
    module = PlainDistiller()
    module.teacher = timm.create_model("test_efficientnet", num_classes=7)
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[LogitDistillation()])
    with pytest.raises(ShapeMismatchError, match=r"student logits \(8, 4\) and teacher logits \(8, 7\)"):
        trainer.fit(module, tiny_loader)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: LogitDistillation(temperature=0), "temperature must be > 0"),
        (lambda: LogitDistillation(weight=-1), "weight must be a finite number >= 0"),
        (lambda: AttentionTransfer([-1, -2], [-1]), "2 student layers .* but 1 teacher layers"),
        (lambda: DecoupledDistillation(warmup_epochs=-1), "warmup_epochs must be >= 0"),
        (lambda: FeatureHint(name="bad name"), "may hold only letters"),
    ],
)
def test_bad_arguments_fail_in_init(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_no_callbacks_means_zero_distillation_loss(tiny_loader: DataLoader, trainer_kwargs):
    task = ClassificationTask(student=ClassifierSpec(name="test_resnet"), num_classes=4)
    trainer = pl.Trainer(**trainer_kwargs, limit_train_batches=1)
    trainer.fit(task, tiny_loader)
    assert not any(key.startswith("train/distill/") for key in trainer.logged_metrics)
