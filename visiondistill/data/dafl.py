"""DAFL: a generator trained against a fixed teacher, for data-free distillation.

Chen et al., "Data-Free Learning of Student Networks", ICCV 2019 (arXiv:1904.01186). A generator ``G`` maps Gaussian
noise ``z`` to images; the teacher ``T`` stays fixed and ``G`` is trained so that, on a batch ``x = G(z)``,

- the teacher's prediction is confident: the one-hot loss ``CE(T(x), argmax T(x))``,
- the teacher's penultimate features (the input of its classifier layer) are large: the activation loss
  ``−mean |f_T(x)|``,
- the batch covers the classes evenly: the information-entropy loss ``Σ_k p̄_k log₁₀ p̄_k`` with
  ``p̄ = mean_i softmax(T(x_i))`` (the negative entropy of the batch's mean prediction, lowest when uniform),

``L_G = one_hot_weight · L_oh + activation_weight · L_a + entropy_weight · L_ie``. The student is then trained on the
same batch, detached, by the ordinary distillation callbacks. The loss definitions (the one-hot target is the
teacher's own argmax; the activation is the mean absolute value; the entropy uses ``log₁₀``) and the generator
(linear → BN → ×2 upsample → conv-BN(eps 0.8)-LeakyReLU(0.2) → ×2 upsample → conv-BN-LeakyReLU → conv → tanh →
BN without affine) follow the authors' code (github.com/huawei-noah/Efficient-Computing, ``DAFL``) and MMRazor's
``DAFLGenerator`` / ``OnehotLikeLoss`` / ``ActivationLoss`` / ``InformationEntropyLoss``; this is our own code.
Unlike DeepInversion, DAFL reads no batch-norm statistics: a teacher without batch norm is fine; it needs a
classifier layer (an ``nn.Linear``) whose input are the features of the activation loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visiondistill.core.errors import ConfigError
from visiondistill.data.errors import DataError

__all__ = [
    "DAFL",
    "DAFLGenerator",
    "DAFLSettings",
    "TeacherWithoutClassifierError",
    "activation_loss",
    "information_entropy_loss",
    "one_hot_loss",
]


class TeacherWithoutClassifierError(DataError, ValueError):
    """The teacher has no ``nn.Linear`` classifier whose input DAFL's activation loss reads."""


def one_hot_loss(logits: Tensor) -> Tensor:
    """DAFL's ``L_oh``: the cross-entropy of the logits N×K against their own argmax (low when confident)."""
    return F.cross_entropy(logits, logits.detach().argmax(dim=1))


def activation_loss(features: Tensor) -> Tensor:
    """DAFL's ``L_a``: minus the mean absolute value of the teacher's penultimate features (low when large)."""
    return -features.abs().mean()


def information_entropy_loss(logits: Tensor) -> Tensor:
    """DAFL's ``L_ie``: ``Σ_k p̄_k log₁₀ p̄_k`` of the batch's mean softmax ``p̄`` (lowest, ``−log₁₀ K``, when uniform).

    Example::

        >>> round(float(information_entropy_loss(torch.zeros(4, 10))), 6)
        -1.0
    """
    mean = F.softmax(logits, dim=1).mean(dim=0)
    return (mean * torch.log10(mean)).sum()


class DAFLGenerator(nn.Module):
    """DAFL's generator: noise ``latent_dim`` → images ``channels``×``image_size``² (``image_size`` divisible by 4).

    The last layer is a BatchNorm without affine parameters, so the images come out with zero mean and unit variance
    per channel: the scale of images normalised for the teacher.
    """

    def __init__(self, latent_dim: int, image_size: int, channels: int = 3, hidden_channels: int = 128) -> None:
        super().__init__()
        self.latent_dim, self.hidden_channels, self.init_size = latent_dim, hidden_channels, image_size // 4
        self.linear = nn.Linear(latent_dim, hidden_channels * self.init_size**2)
        self.bn = nn.BatchNorm2d(hidden_channels)
        self.block1 = nn.Sequential(
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1),
            nn.BatchNorm2d(hidden_channels, eps=0.8),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(hidden_channels, hidden_channels // 2, 3, padding=1),
            nn.BatchNorm2d(hidden_channels // 2, eps=0.8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(hidden_channels // 2, channels, 3, padding=1),
            nn.Tanh(),
            nn.BatchNorm2d(channels, affine=False),
        )

    def forward(self, z: Tensor) -> Tensor:
        """Images N×C×H×W from noise N×``latent_dim``."""
        x = self.linear(z).view(z.shape[0], self.hidden_channels, self.init_size, self.init_size)
        x = F.interpolate(self.bn(x), scale_factor=2)
        x = F.interpolate(self.block1(x), scale_factor=2)
        return self.block2(x)


@dataclass
class DAFLSettings:
    """The generator and its training (defaults: the paper's loss weights, α = 0.1 and β = 5).

    Args:
        latent_dim: Size of the noise vector.
        hidden_channels: Width of the generator.
        lr: Adam's learning rate of the generator.
        one_hot_weight: Weight of ``L_oh``.
        activation_weight: Weight of ``L_a`` (0: the teacher's features are not read, no classifier needed).
        entropy_weight: Weight of ``L_ie``.
        generator_steps: Generator updates per synthesised batch (the paper: 1).
    """

    latent_dim: int = 100
    hidden_channels: int = 128
    lr: float = 0.02
    one_hot_weight: float = 1.0
    activation_weight: float = 0.1
    entropy_weight: float = 5.0
    generator_steps: int = 1

    def __post_init__(self) -> None:
        for name, low in (("latent_dim", 1), ("hidden_channels", 2), ("generator_steps", 1)):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise ConfigError(f"generator {name} must be an integer >= {low}, got {value!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"generator_lr must be a positive number, got {self.lr!r}")
        for name in ("one_hot_weight", "activation_weight", "entropy_weight"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"DAFL {name} must be a finite number >= 0, got {value!r}")


def check_image_size(image_size: object) -> None:
    """Raises a `ConfigError` unless ``image_size`` is a multiple of 4, >= 8 (the generator upsamples twice)."""
    whole = isinstance(image_size, int) and not isinstance(image_size, bool)
    if not (whole and image_size >= 8 and image_size % 4 == 0):
        raise ConfigError(f"DAFL image_size must be a multiple of 4 and >= 8 (two ×2 upsamplings), got {image_size!r}")


def _classifier(teacher: nn.Module) -> nn.Module:
    get = getattr(teacher, "get_classifier", None)  # timm models name their head
    head = get() if callable(get) else None
    if isinstance(head, nn.Linear):
        return head
    linears = [module for module in teacher.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise TeacherWithoutClassifierError(
            f"the teacher ({type(teacher).__name__}) has no nn.Linear classifier, whose input DAFL's activation loss "
            "reads; set activation_weight: 0 (the one-hot and entropy terms need only the logits), or use a teacher "
            "with a linear head"
        )
    return linears[-1]


class DAFL:
    """A DAFL generator with its optimiser: every `step` trains it once against the teacher and returns a batch.

    Args:
        image_size: Height and width of the images (divisible by 4).
        channels: Channels of the images.
        settings: The generator's size, learning rate and loss weights.
        seed: Seed of the generator's initial weights.

    Example::

        >>> import timm
        >>> teacher = timm.create_model("test_resnet", num_classes=3).eval()
        >>> dafl = DAFL(image_size=32, settings=DAFLSettings(latent_dim=8, hidden_channels=8))
        >>> images, terms = dafl.step(teacher, torch.randn(4, 8))
        >>> images.shape, sorted(terms)
        (torch.Size([4, 3, 32, 32]), ['activation', 'entropy', 'one_hot', 'total'])
    """

    def __init__(self, image_size: int, channels: int = 3, settings: DAFLSettings | None = None, seed: int = 0) -> None:
        check_image_size(image_size)
        self.settings = settings or DAFLSettings()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            s = self.settings
            self.generator = DAFLGenerator(s.latent_dim, image_size, channels, s.hidden_channels)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=self.settings.lr)

    def losses(self, teacher: nn.Module, images: Tensor) -> dict[str, Tensor]:
        """The weighted generator loss and its terms on ``images`` (gradients flow to the images)."""
        s = self.settings
        features: list[Tensor] = []
        handle = None
        if s.activation_weight > 0:
            handle = _classifier(teacher).register_forward_hook(lambda _m, inputs, _o: features.append(inputs[0]))
        try:
            logits = teacher(images)
        finally:
            if handle is not None:
                handle.remove()
        terms = {
            "one_hot": one_hot_loss(logits),
            "activation": activation_loss(features[-1]) if features else logits.new_zeros(()),
            "entropy": information_entropy_loss(logits),
        }
        terms["total"] = (
            s.one_hot_weight * terms["one_hot"]
            + s.activation_weight * terms["activation"]
            + s.entropy_weight * terms["entropy"]
        )
        return terms

    def step(self, teacher: nn.Module, z: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Trains the generator ``generator_steps`` times on noise ``z``; returns the first step's images, detached.

        The teacher is in eval mode for the step (its mode restored after) and gets no gradient; the images are those
        the generator made before its update, as in the paper, where the student learns from the same batch.
        """
        device = next(teacher.parameters()).device
        self._to(device)
        z = z.to(device)
        modes = {module: module.training for module in teacher.modules()}
        teacher.eval()
        self.generator.train()
        params = list(self.generator.parameters())
        batch: Tensor | None = None
        values: dict[str, float] = {}
        try:
            with torch.enable_grad():
                for _ in range(self.settings.generator_steps):
                    images = self.generator(z)
                    terms = self.losses(teacher, images)
                    # Gradients to the generator only: the teacher's parameters stay untouched.
                    grads = torch.autograd.grad(terms["total"], params)
                    for param, grad in zip(params, grads, strict=True):
                        param.grad = grad
                    self.optimizer.step()
                    if batch is None:
                        batch, values = images.detach(), {name: float(value.detach()) for name, value in terms.items()}
        finally:
            for module, mode in modes.items():
                module.train(mode)
        assert batch is not None
        return batch, values

    def _to(self, device: torch.device) -> None:
        if next(self.generator.parameters()).device == device:
            return
        self.generator.to(device)
        for state in self.optimizer.state.values():  # Adam's moments follow the parameters
            for key, value in state.items():
                if isinstance(value, Tensor) and key != "step":
                    state[key] = value.to(device)

    def state_dict(self) -> dict[str, object]:
        """The generator's and its optimiser's state (saved in the run's checkpoints by the datamodule)."""
        return {"generator": self.generator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restores `state_dict`'s output."""
        self.generator.load_state_dict(state["generator"])  # type: ignore[arg-type]
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
