"""DeepInversion: the BatchNorm-statistics loss against the formula, inversion at work, teachers without BN refused."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from visiondistill.data.inversion import (
    DeepInversion,
    InversionSettings,
    TeacherWithoutBatchNormError,
    batchnorm_statistics_loss,
    image_prior_losses,
)


def bn_teacher(num_classes: int = 3) -> nn.Module:
    """A tiny timm ResNet with non-trivial running statistics and a sharp head (so its confidence can move)."""
    torch.manual_seed(0)
    teacher = timm.create_model("test_resnet", num_classes=num_classes)
    teacher.train()
    with torch.no_grad():
        for _ in range(3):
            teacher(torch.rand(16, 3, 32, 32) * 3 - 1)
        teacher.get_classifier().weight.mul_(20)
    return teacher.eval()


def test_batchnorm_loss_matches_the_hand_formula():
    torch.manual_seed(1)
    x = torch.randn(4, 3, 5, 6) * 2 + 1
    running_mean, running_var = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 3.0, 0.25])
    mean = [x[:, c].mean() for c in range(3)]
    var = [((x[:, c] - mean[c]) ** 2).mean() for c in range(3)]  # biased, over N, H, W
    expected = (
        sum((running_mean[c] - mean[c]) ** 2 for c in range(3)) ** 0.5
        + sum((running_var[c] - var[c]) ** 2 for c in range(3)) ** 0.5
    )
    assert torch.allclose(batchnorm_statistics_loss(x, running_mean, running_var), expected, rtol=1e-5)


def test_the_bn_term_sums_every_layer_with_the_first_weighted():
    teacher = bn_teacher()
    inversion = DeepInversion(teacher, InversionSettings(first_bn_multiplier=3.0))
    inputs: dict[nn.Module, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda m, i, o: inputs.__setitem__(m, i[0])) for m in inversion.layers]
    images = torch.randn(4, 3, 32, 32)
    terms, _ = inversion.losses(images, torch.tensor([0, 1, 2, 0]))
    teacher(images)
    for handle in handles:
        handle.remove()
    per_layer = [batchnorm_statistics_loss(inputs[m], m.running_mean, m.running_var) for m in inversion.layers]
    assert len(per_layer) == sum(isinstance(m, nn.BatchNorm2d) for m in teacher.modules()) > 1
    assert torch.allclose(terms["bn"], 3.0 * per_layer[0] + sum(per_layer[1:]), rtol=1e-5)


def test_image_priors_follow_the_reference_conventions():
    images = torch.zeros(2, 1, 3, 3)
    images[0, 0, 1, 1] = 1.0  # one bright pixel: 2 right/down differences each, 2 per diagonal
    tv_l2, l2 = image_prior_losses(images)
    assert torch.isclose(tv_l2, torch.tensor(4 * 2**0.5))
    assert torch.isclose(l2, torch.tensor(0.5))


def test_inversion_lowers_the_loss_and_raises_the_target_confidence():
    teacher = bn_teacher()
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    inversion = DeepInversion(teacher, InversionSettings(iterations=25, lr=0.1, bn_weight=1.0))
    noise = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, logits_before = inversion.losses(noise, targets)
    images, totals = inversion.synthesize(targets, image_size=32, seed=0)
    with torch.no_grad():
        after, logits_after = inversion.losses(images, targets)
    confidence_before = logits_before.softmax(1)[range(6), targets].mean()
    confidence_after = logits_after.softmax(1)[range(6), targets].mean()
    assert after["total"] < 0.95 * before["total"] and totals[-1] < totals[0], (before, after)
    assert after["bn"] < before["bn"]
    assert confidence_after > confidence_before + 0.2, (confidence_before, confidence_after)
    low, high = inversion.pixel_range(3, images.device)
    assert (images >= low - 1e-6).all() and (images <= high + 1e-6).all()  # clipped to real pixel values
    assert not teacher.training and all(p.grad is None for p in teacher.parameters())


def test_same_seed_same_images_and_modes_restored():
    teacher = bn_teacher().train()
    inversion = DeepInversion(teacher, InversionSettings(iterations=2))
    first, _ = inversion.synthesize(torch.tensor([0, 1]), image_size=32, seed=3)
    second, _ = inversion.synthesize(torch.tensor([0, 1]), image_size=32, seed=3)
    assert torch.equal(first, second)
    assert all(m.training for m in teacher.modules())  # eval only during the optimisation


def test_competition_term_reads_the_student():
    teacher, student = bn_teacher(), timm.create_model("test_resnet", num_classes=3).train()
    inversion = DeepInversion(teacher, InversionSettings(iterations=2, competition_weight=1.0))
    terms, _ = inversion.losses(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), student)
    assert 0 < float(terms["competition"]) <= 1
    inversion.synthesize(torch.tensor([0, 1]), image_size=32, student=student, seed=0)
    assert student.training and all(p.grad is None for p in student.parameters())


def test_teacher_without_batchnorm_is_refused_by_name():
    teacher = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(TeacherWithoutBatchNormError, match="Sequential.*BatchNorm2d.*use a teacher with batch norm"):
        DeepInversion(teacher)
