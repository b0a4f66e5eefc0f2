"""DeepInversion: images synthesised from a trained teacher, for data-free distillation.

Yin et al., "Dreaming to Distill: Data-free Knowledge Transfer via DeepInversion", CVPR 2020. A batch of images is
optimised (the teacher stays fixed) so that

- the batch's per-channel mean and variance at the input of every ``BatchNorm2d`` of the teacher match that layer's
  running statistics (``r_feature``: ``‖μ_l(x) − μ_l^BN‖₂ + ‖σ²_l(x) − σ²_l^BN‖₂``, biased variance, the first layer
  weighted ``first_bn_multiplier`` times),
- the teacher classifies each image as its target class (cross-entropy on the teacher's logits),
- the images look like images: total variation (L2 norms of the differences to the right, down and both diagonal
  neighbours) and the mean L2 norm of each image,
- optionally (Adaptive DeepInversion) the student disagrees with the teacher on them: ``1 − JS(p_s, p_t)`` at
  temperature 3 with the probabilities clamped to [0.01, 0.99].

Every step sees the batch rolled by a random offset of up to ``jitter`` pixels and, with ``flip``, mirrored half of
the time; Adam (betas 0.5/0.9) with a cosine learning rate; after each step the pixels are clipped to the range a
normalised [0, 1] image can take. These conventions follow the authors' code (github.com/NVlabs/DeepInversion,
``deepinversion.py``: ``DeepInversionFeatureHook``, ``get_image_prior_losses``); this is our own implementation.
The images live in the teacher's input space (normalised by ``mean``/``std``), ready to be fed to a student.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visiondistill.core.errors import ConfigError
from visiondistill.data.errors import DataError

__all__ = [
    "DeepInversion",
    "InversionSettings",
    "TeacherWithoutBatchNormError",
    "batchnorm_statistics_loss",
    "competition_loss",
    "image_prior_losses",
]


class TeacherWithoutBatchNormError(DataError, ValueError):
    """The teacher has no BatchNorm2d layer with running statistics, which DeepInversion matches."""


def batchnorm_statistics_loss(features: Tensor, running_mean: Tensor, running_var: Tensor) -> Tensor:
    """DeepInversion's ``r_feature`` of one layer: ``‖mean(x) − running_mean‖₂ + ‖var(x) − running_var‖₂``.

    Args:
        features: The layer's input, N×C×H×W.
        running_mean: The layer's running mean, C.
        running_var: The layer's running variance, C.

    Returns:
        A scalar: the L2 distances of the batch's per-channel mean and biased variance (over N, H, W) to the
        running statistics, added.

    Example::

        >>> x = torch.zeros(2, 3, 4, 4)
        >>> float(batchnorm_statistics_loss(x, torch.zeros(3), torch.zeros(3)))
        0.0
    """
    channels = features.shape[1]
    flat = features.transpose(0, 1).reshape(channels, -1)
    mean = flat.mean(dim=1)
    var = flat.var(dim=1, unbiased=False)
    return torch.linalg.vector_norm(running_var.to(var) - var) + torch.linalg.vector_norm(running_mean.to(mean) - mean)


def image_prior_losses(images: Tensor) -> tuple[Tensor, Tensor]:
    """Total variation (L2) and the mean per-image L2 norm of a batch N×C×H×W.

    Returns:
        ``(tv_l2, l2)``: the sum of the L2 norms of the differences to the right, lower, lower-left and
        lower-right neighbours; the mean over images of each image's L2 norm.
    """
    diffs = (
        images[:, :, :, :-1] - images[:, :, :, 1:],
        images[:, :, :-1, :] - images[:, :, 1:, :],
        images[:, :, 1:, :-1] - images[:, :, :-1, 1:],
        images[:, :, :-1, :-1] - images[:, :, 1:, 1:],
    )
    tv_l2 = sum(torch.linalg.vector_norm(diff) for diff in diffs)
    l2 = torch.linalg.vector_norm(images.flatten(1), dim=1).mean()
    return tv_l2, l2


def competition_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 3.0) -> Tensor:
    """Adaptive DeepInversion's term: ``1 − JS(p_s, p_t)``, low where student and teacher disagree.

    The Jensen-Shannon divergence at ``temperature``, probabilities clamped to [0.01, 0.99] as in the authors' code,
    the divergence clamped to [0, 1].
    """
    p = F.softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    m = (0.5 * (p + q)).clamp(0.01, 0.99)
    p, q = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99)
    js = 0.5 * F.kl_div(p.log(), m, reduction="batchmean") + 0.5 * F.kl_div(q.log(), m, reduction="batchmean")
    return 1.0 - js.clamp(0.0, 1.0)


@dataclass
class InversionSettings:
    """The optimisation of one synthesised batch (defaults: the authors' CIFAR-scale settings).

    Args:
        iterations: Optimiser steps per batch.
        lr: Adam's learning rate on the pixels (cosine-decayed to 0 over ``iterations``).
        ce_weight: Weight of the teacher's cross-entropy on the target classes.
        bn_weight: Weight of the BatchNorm statistics loss (summed over layers).
        first_bn_multiplier: Extra factor on the first BatchNorm layer's term.
        tv_l2_weight: Weight of the total variation.
        l2_weight: Weight of the images' L2 norm.
        competition_weight: Weight of the student-teacher competition term (0: plain DeepInversion).
        jitter: Largest random roll in pixels at each step (0: none).
        flip: Mirror the batch horizontally at random steps.
        mean: Per-channel normalisation mean of the teacher's inputs (pixel range for clipping and display).
        std: Per-channel normalisation std.
    """

    iterations: int = 200
    lr: float = 0.1
    ce_weight: float = 1.0
    bn_weight: float = 10.0
    first_bn_multiplier: float = 10.0
    tv_l2_weight: float = 1e-4
    l2_weight: float = 1e-5
    competition_weight: float = 0.0
    jitter: int = 2
    flip: bool = True
    mean: Sequence[float] = field(default=(0.485, 0.456, 0.406))
    std: Sequence[float] = field(default=(0.229, 0.224, 0.225))

    def __post_init__(self) -> None:
        if not (isinstance(self.iterations, int) and self.iterations >= 1):
            raise ConfigError(f"inversion iterations must be an integer >= 1, got {self.iterations!r}")
        if not (isinstance(self.jitter, int) and self.jitter >= 0):
            raise ConfigError(f"inversion jitter must be an integer >= 0 (pixels), got {self.jitter!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"inversion lr must be a positive number, got {self.lr!r}")
        weights = ("ce_weight", "bn_weight", "first_bn_multiplier", "tv_l2_weight", "l2_weight", "competition_weight")
        for name in weights:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"inversion {name} must be a finite number >= 0, got {value!r}")
        if len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise ConfigError(
                f"inversion mean/std must have one value per channel and std > 0, got {self.mean}, {self.std}"
            )


def _batchnorm_layers(teacher: nn.Module) -> list[nn.BatchNorm2d]:
    layers = [
        module
        for module in teacher.modules()
        if isinstance(module, nn.BatchNorm2d) and module.running_mean is not None and module.running_var is not None
    ]
    if not layers:
        raise TeacherWithoutBatchNormError(
            f"the teacher ({type(teacher).__name__}) has no BatchNorm2d layer with running statistics, which "
            "data-free distillation by DeepInversion matches; use a teacher with batch norm (e.g. a ResNet), or "
            "distil on real or unlabeled images instead (docs/unlabeled.md)"
        )
    return layers


class DeepInversion:
    """Synthesises batches of images from a teacher with BatchNorm layers (see the module docstring).

    Args:
        teacher: The trained classifier; it is put in eval mode while a batch is optimised, its mode restored after.
        settings: The optimisation settings.

    Raises:
        TeacherWithoutBatchNormError: When the teacher has no ``BatchNorm2d`` with running statistics.

    Example::

        >>> import timm
        >>> teacher = timm.create_model("test_resnet", num_classes=3).eval()
        >>> inversion = DeepInversion(teacher, InversionSettings(iterations=2))
        >>> images, _ = inversion.synthesize(torch.tensor([0, 1]), image_size=32, seed=0)
        >>> images.shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(self, teacher: nn.Module, settings: InversionSettings | None = None) -> None:
        self.teacher = teacher
        self.settings = settings or InversionSettings()
        self.layers = _batchnorm_layers(teacher)
        self._features: dict[int, Tensor] = {}

    def pixel_range(self, channels: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The lowest and highest normalised value of each channel (images of [0, 1] pixels), 1×C×1×1 each."""
        mean, std = list(self.settings.mean), list(self.settings.std)
        if len(mean) != channels:
            if len(mean) == 3 and channels == 1:
                mean, std = [sum(mean) / 3], [sum(std) / 3]
            else:
                raise ConfigError(f"inversion mean/std have {len(mean)} values but the images have {channels} channels")
        mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
        return (0 - mean_t) / std_t, (1 - mean_t) / std_t

    def losses(
        self, images: Tensor, targets: Tensor, student: nn.Module | None = None
    ) -> tuple[dict[str, Tensor], Tensor]:
        """The weighted loss terms on ``images`` (no jitter) and the teacher's logits.

        Returns:
            ``({"total", "ce", "bn", "tv_l2", "l2", "competition"}, teacher_logits)``.
        """
        s = self.settings
        handles = [layer.register_forward_hook(self._hook) for layer in self.layers]
        try:
            self._features.clear()
            logits = self.teacher(images)
        finally:
            for handle in handles:
                handle.remove()
        bn_terms = [
            batchnorm_statistics_loss(self._features[id(layer)], layer.running_mean, layer.running_var)
            for layer in self.layers
            if id(layer) in self._features
        ]
        self._features.clear()
        bn = bn_terms[0] * s.first_bn_multiplier + sum(bn_terms[1:]) if bn_terms else logits.new_zeros(())
        ce = F.cross_entropy(logits, targets)
        tv_l2, l2 = image_prior_losses(images)
        terms = {"ce": ce, "bn": bn, "tv_l2": tv_l2, "l2": l2, "competition": logits.new_zeros(())}
        if student is not None and s.competition_weight > 0:
            terms["competition"] = competition_loss(student(images), logits)
        total = (
            s.ce_weight * ce
            + s.bn_weight * bn
            + s.tv_l2_weight * tv_l2
            + s.l2_weight * l2
            + s.competition_weight * terms["competition"]
        )
        return {"total": total, **terms}, logits

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self._features[id(module)] = inputs[0]

    def synthesize(
        self,
        targets: Tensor,
        *,
        image_size: int,
        in_channels: int = 3,
        student: nn.Module | None = None,
        seed: int | None = None,
    ) -> tuple[Tensor, list[float]]:
        """Optimises one batch of images, one per target class.

        Args:
            targets: Target class per image, N (on any device; the images are made on the teacher's).
            image_size: Height and width of the images.
            in_channels: Channels of the images.
            student: The student, for the competition term (eval mode during the forwards, no gradient to it).
            seed: Seed of the initial noise and the jitter; ``None`` draws from the global generators.

        Returns:
            ``(images, totals)``: the images (detached, normalised) and the total loss at every step.
        """
        s = self.settings
        device = next(self.teacher.parameters()).device
        targets = targets.to(device)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        rng = random.Random(seed)
        noise = torch.randn((targets.shape[0], in_channels, image_size, image_size), generator=generator)
        images = noise.to(device).requires_grad_(True)
        low, high = self.pixel_range(in_channels, device)
        optimizer = torch.optim.Adam([images], lr=s.lr, betas=(0.5, 0.9), eps=1e-8)
        modes = {module: module.training for module in self.teacher.modules()}
        student_modes = {module: module.training for module in student.modules()} if student is not None else {}
        self.teacher.eval()
        if student is not None:
            student.eval()
        totals: list[float] = []
        try:
            with torch.enable_grad():
                for step in range(s.iterations):
                    for group in optimizer.param_groups:
                        group["lr"] = 0.5 * (1 + math.cos(math.pi * step / s.iterations)) * s.lr
                    jittered = images
                    if s.jitter:
                        shifts = (rng.randint(-s.jitter, s.jitter), rng.randint(-s.jitter, s.jitter))
                        jittered = torch.roll(jittered, shifts=shifts, dims=(2, 3))
                    if s.flip and rng.random() < 0.5:
                        jittered = torch.flip(jittered, dims=(3,))
                    terms, _ = self.losses(jittered, targets, student)
                    # Gradients to the pixels only: the teacher's and student's parameters stay untouched.
                    (grad,) = torch.autograd.grad(terms["total"], [images])
                    images.grad = grad
                    optimizer.step()
                    with torch.no_grad():
                        images.copy_(torch.maximum(torch.minimum(images, high), low))
                    totals.append(float(terms["total"].detach()))
        finally:
            for module, mode in {**modes, **student_modes}.items():
                module.train(mode)
        return images.detach(), totals
