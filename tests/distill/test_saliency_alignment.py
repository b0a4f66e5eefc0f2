"""SaliencyAlignment: the differentiable Grad-CAM term, its formulas, its gradients and its manners in training."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch.utils.data import DataLoader

from visiondistill.core.adapters.segmentation import SegmentationSaliencyAdapter
from visiondistill.core.maps import gradcam_map
from visiondistill.core.recorder import resolve_layer
from visiondistill.core.saliency import ClassificationSaliencyAdapter, LogitsModel
from visiondistill.distill import AttentionTransfer, LayerNotFoundError, ProtocolError, SaliencyAlignment
from visiondistill.distill.losses import saliency_alignment_loss
from visiondistill.models import ClassifierSpec
from visiondistill.tasks import ClassificationTask, SegmentationTask

# -- independent numpy transcriptions ------------------------------------------------------------------


def np_gradcam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0], a.shape[2], a.shape[3]))
    for n in range(a.shape[0]):
        for c in range(a.shape[1]):
            out[n] += g[n, c].mean() * a[n, c]
    return np.maximum(out, 0)


def np_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres (align_corners=False), edges clamped."""
    h, w = x.shape

    def coords(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0)
        low = np.minimum(np.floor(src).astype(int), in_size - 1)
        return low, np.minimum(low + 1, in_size - 1), src - low

    y0, y1, fy = coords(height, h)
    x0, x1, fx = coords(width, w)
    top = x[y0][:, x0] * (1 - fx) + x[y0][:, x1] * fx
    bottom = x[y1][:, x0] * (1 - fx) + x[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def np_alignment(s: np.ndarray, t: np.ndarray, distance: str, eps: float = 1e-7) -> float:
    values = []
    for si, ti in zip(s, t, strict=True):
        if si.shape != ti.shape:
            si = np_bilinear(si, *ti.shape)
        si, ti = si.ravel().astype(np.float64), ti.ravel().astype(np.float64)
        if distance == "cosine":
            values.append(1 - si @ ti / (max(np.linalg.norm(si), eps) * max(np.linalg.norm(ti), eps)))
        else:
            sn = (si - si.min()) / ((si - si.min()).max() + eps)
            tn = (ti - ti.min()) / ((ti - ti.min()).max() + eps)
            values.append(np.mean((sn - tn) ** 2))
    return float(np.mean(values))


def test_gradcam_map_matches_numpy():
    generator = torch.Generator().manual_seed(0)
    a, g = torch.randn(3, 5, 4, 6, generator=generator), torch.randn(3, 5, 4, 6, generator=generator)
    np.testing.assert_allclose(gradcam_map(a, g).numpy(), np_gradcam(a.numpy(), g.numpy()), atol=1e-6)


@pytest.mark.parametrize("distance", ["cosine", "mse"])
@pytest.mark.parametrize("student_size", [(8, 8), (4, 4), (3, 5)])
def test_saliency_alignment_loss_matches_numpy(distance, student_size):
    generator = torch.Generator().manual_seed(1)
    s = torch.rand(4, *student_size, generator=generator)
    t = torch.rand(4, 8, 8, generator=generator)
    s[0] = 0.0  # an all-zero map: cosine treats its norm as eps, mse maps it to zeros
    got = float(saliency_alignment_loss(s, t, distance=distance))
    assert got == pytest.approx(np_alignment(s.numpy(), t.numpy(), distance), abs=1e-6)


def test_saliency_alignment_loss_invariances_and_errors():
    cam = torch.rand(2, 6, 6)
    assert float(saliency_alignment_loss(5 * cam, cam, "cosine")) == pytest.approx(0.0, abs=1e-6)
    assert float(saliency_alignment_loss(5 * cam + 2, cam, "mse")) == pytest.approx(0.0, abs=1e-6)
    assert float(saliency_alignment_loss(cam, 1 - cam, "mse")) > 0.1
    with pytest.raises(ValueError, match="distance must be 'cosine' or 'mse'"):
        saliency_alignment_loss(cam, cam, "l1")
    with pytest.raises(ValueError, match=r"student_cam must be 3-D \(N, H, W\)"):
        saliency_alignment_loss(cam[0], cam)
    with pytest.raises(ValueError, match="same batch size"):
        saliency_alignment_loss(cam[:1], cam)


def test_constructor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="distance must be 'cosine' or 'mse', got 'l2'"):
        SaliencyAlignment(distance="l2")
    with pytest.raises(ValueError, match="target must be 'teacher' or 'ground_truth'"):
        SaliencyAlignment(target="student")


# -- the adapters' differentiable scores ---------------------------------------------------------------


def test_target_scores_of_the_built_in_adapters():
    logits = torch.randn(3, 4, requires_grad=True)
    scores = ClassificationSaliencyAdapter().target_scores(logits, torch.tensor([2, 0, 3]), None)
    assert torch.equal(scores, logits[[0, 1, 2], [2, 0, 3]])
    scores.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() == 3

    seg_logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[0, :2, :2] = 1
    masks[1, 2:, :] = 2
    adapter = SegmentationSaliencyAdapter()
    scores = adapter.target_scores(seg_logits, torch.tensor([1, 2]), (torch.zeros(2, 3, 4, 4), masks))
    expected = torch.stack([seg_logits[0, 1, :2, :2].sum(), seg_logits[1, 2, 2:, :].sum()])
    torch.testing.assert_close(scores, expected)
    assert scores.requires_grad


# -- in training -----------------------------------------------------------------------------------------


class ZeroTaskLoss(ClassificationTask):
    """Trains on the distillation terms alone, so every gradient comes from them."""

    def task_loss(self, student_out, batch):
        return student_out.sum() * 0.0


def make_task(cls=ClassificationTask) -> ClassificationTask:
    torch.manual_seed(0)
    return cls(
        student=ClassifierSpec(name="test_resnet"), teacher=ClassifierSpec(name="test_efficientnet"), num_classes=4
    )


class GradientSpy(pl.Callback):
    """Records, per step, which parameters hold gradients before and after backward."""

    def __init__(self) -> None:
        self.grads_before_backward: list[bool] = []
        self.grad_norms: list[dict[str, float]] = []

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.grads_before_backward.append(any(p.grad is not None for p in pl_module.parameters()))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grad_norms.append(
            {n: float(p.grad.norm()) if p.grad is not None else 0.0 for n, p in pl_module.named_parameters()}
        )


def test_gradients_reach_the_student_through_activations_and_channel_weights(tiny_loader, trainer_kwargs):
    task = make_task(ZeroTaskLoss)
    spy = GradientSpy()
    callback = SaliencyAlignment(student_layer="layer2", teacher_layer=-2)
    trainer = pl.Trainer(**{**trainer_kwargs, "max_steps": 2}, callbacks=[callback, spy])
    trainer.fit(task, tiny_loader)
    # autograd.grad inside the term leaves nothing in .grad before Lightning's backward.
    assert spy.grads_before_backward == [False, False]
    norms = spy.grad_norms[0]
    # (timm zero-initialises the last BatchNorm of each residual branch, so the branches' first convolutions get no
    # gradient from any loss in the first step; the shortcut path and the last BatchNorm do.)
    # Before the layer: through the activations A_s.
    assert norms["student.conv1.0.weight"] > 0
    assert norms["student.layer2.0.downsample.1.weight"] > 0 and norms["student.layer2.0.bn2.weight"] > 0
    # After the layer: only through the channel weights mean_hw(∂score/∂A), i.e. the double backward.
    assert norms["student.layer3.0.downsample.1.weight"] > 0 and norms["student.layer3.0.bn3.weight"] > 0
    assert norms["student.fc.weight"] > 0
    assert not any(p.requires_grad or p.grad is not None for p in task.teacher.parameters())


def test_teacher_cam_equals_grad_cam_and_student_cam_is_the_same_formula(tiny_loader, trainer_kwargs):
    task = make_task()
    callback = SaliencyAlignment(student_layer="layer2", teacher_layer="blocks.1")
    trainer = pl.Trainer(**{**trainer_kwargs, "max_steps": 1}, callbacks=[callback])
    trainer.fit(task, tiny_loader)
    images = next(iter(tiny_loader))[0][:4]
    categories = torch.tensor([0, 1, 2, 3])
    teacher = task.teacher.eval()
    ours = callback.teacher_cam(teacher, images, categories, None)
    # grad-cam on the whole graph (input requires grad), before its resize and scaling.
    layer = resolve_layer(teacher, "blocks.1")[1]
    with GradCAM(LogitsModel(teacher), [layer]) as cam:
        inputs = images.clone().requires_grad_(True)
        targets = [ClassifierOutputTarget(int(c)) for c in categories]
        outputs = cam.activations_and_grads(inputs)
        loss = sum(t(o) for t, o in zip(targets, outputs, strict=True))
        loss.backward(retain_graph=True)
        activations = cam.activations_and_grads.activations[0]
        gradients = cam.activations_and_grads.gradients[0]
        reference = cam.get_cam_image(inputs, layer, targets, activations.numpy(), gradients.numpy(), False)
    np.testing.assert_allclose(ours.numpy(), np.maximum(reference, 0), rtol=1e-5, atol=1e-6)
    assert not ours.requires_grad


def test_term_decreases_when_trained_alone(tiny_loader, trainer_kwargs):
    task = make_task(ZeroTaskLoss)
    callback = SaliencyAlignment(student_layer="layer2", teacher_layer="blocks.1", distance="mse")
    batch = next(iter(tiny_loader))
    loader = DataLoader([(batch[0][i], batch[1][i]) for i in range(8)], batch_size=8)

    class Terms(pl.Callback):
        values: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.values.append(float(trainer.callback_metrics["train/distill/saliency_alignment_step"]))

    terms = Terms()
    trainer = pl.Trainer(**{**trainer_kwargs, "max_epochs": 30}, callbacks=[callback, terms])
    task.lr, task.warmup_epochs, task.scheduler_name = 3e-3, 0.0, "constant"
    trainer.fit(task, loader)
    assert np.mean(terms.values[-5:]) < 0.7 * np.mean(terms.values[:5]), terms.values


def test_batchnorm_statistics_move_once_per_step(tiny_loader, trainer_kwargs):
    task = make_task()
    trainer = pl.Trainer(
        **{**trainer_kwargs, "max_steps": 3}, callbacks=[SaliencyAlignment(student_layer=-2, teacher_layer=-2)]
    )
    trainer.fit(task, tiny_loader)
    assert int(task.student.bn1.num_batches_tracked) == 3  # no second student forward


def test_segmentation_student_gets_gradients_from_the_term(small_seg_loader, seg_specs, trainer_kwargs):
    torch.manual_seed(0)

    class SegZero(SegmentationTask):
        def task_loss(self, student_out, batch):
            return student_out.sum() * 0.0

    task = SegZero(student=seg_specs[0], teacher=seg_specs[1], num_classes=3)
    spy = GradientSpy()
    callback = SaliencyAlignment(student_layer="decoder", teacher_layer="decoder")
    trainer = pl.Trainer(**{**trainer_kwargs, "max_steps": 1}, callbacks=[callback, spy])
    trainer.fit(task, small_seg_loader)
    norms = spy.grad_norms[0]
    encoder = [v for k, v in norms.items() if k.startswith("student.encoder.")]
    head = [v for k, v in norms.items() if k.startswith("student.segmentation_head.")]
    assert max(encoder) > 0 and max(head) > 0


def test_ground_truth_target_and_fallback(tiny_loader, trainer_kwargs):
    task = make_task()
    callback = SaliencyAlignment(student_layer=-2, teacher_layer=-2, target="ground_truth")
    images_only = DataLoader(tiny_loader.dataset.tensors[0], batch_size=8)
    with pytest.warns(UserWarning, match="no ground truth"):
        pl.Trainer(**{**trainer_kwargs, "max_steps": 1}, callbacks=[callback]).fit(_ImagesOnly(task), images_only)


class _ImagesOnly(pl.LightningModule):
    """A protocol module trained on unlabelled images: the task loss is a dummy, the term is the point."""

    def __init__(self, task: ClassificationTask) -> None:
        super().__init__()
        self.student, self.teacher = task.student, task.teacher

    def training_step(self, batch, batch_idx):
        from visiondistill.distill import distillation_loss

        out = self.student(batch)
        with torch.no_grad():
            teacher_out = self.teacher(batch)
        return out.sum() * 0.0 + distillation_loss(self, batch, out, teacher_out)

    def configure_optimizers(self):
        return torch.optim.SGD(self.student.parameters(), lr=0.01)


def test_bad_layers_and_missing_teacher_fail_at_setup(tiny_loader, trainer_kwargs):
    with pytest.raises(LayerNotFoundError, match="layer9"):
        pl.Trainer(**trainer_kwargs, callbacks=[SaliencyAlignment(student_layer="layer9")]).fit(
            make_task(), tiny_loader
        )
    torch.manual_seed(0)
    alone = ClassificationTask(student=ClassifierSpec(name="test_resnet"), num_classes=4)
    with pytest.raises(ProtocolError, match="needs a teacher"):
        pl.Trainer(**trainer_kwargs, callbacks=[SaliencyAlignment()]).fit(alone, tiny_loader)


class _TeacherFeatureSpy(pl.Callback):
    """Notes whether the teacher features attention transfer reads still carry an autograd graph."""

    def __init__(self, transfer: AttentionTransfer) -> None:
        self.transfer = transfer
        self.teacher_requires_grad: list[bool] = []

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.teacher_requires_grad += [t.requires_grad for _, t in self.transfer.recorded_pairs()]


def test_teacher_features_of_other_terms_survive_the_teacher_cam_forward(tiny_loader, trainer_kwargs):
    """SaliencyAlignment runs the teacher a second time (with autograd from its layer on) for the teacher's CAM.

    Attention transfer records a later teacher stage in that forward too. Those teacher features must be constants:
    with the autograd graph of the CAM forward attached (and freed by its ``autograd.grad``), the step's backward
    failed with "Trying to backward through the graph a second time".
    """
    task = make_task()
    transfer = AttentionTransfer(student_layers=[-3, -2], teacher_layers=[-3, -2], weight=25.0)
    spy = _TeacherFeatureSpy(transfer)
    callbacks = [SaliencyAlignment(student_layer=-3, teacher_layer=-3), transfer, spy]
    trainer = pl.Trainer(**{**trainer_kwargs, "max_steps": 2}, callbacks=callbacks)
    trainer.fit(task, tiny_loader)
    assert trainer.global_step == 2
    assert spy.teacher_requires_grad == [False] * 4
