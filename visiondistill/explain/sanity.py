"""Sanity checks of explanation methods: does the map change when the model's weights are randomised?

Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018), cascading randomisation: re-initialise the
network's parameterised blocks one after the other, from the top (the head) down, and compare the explanation of
each partly randomised network with the trained network's, for the same images and targets. A method whose maps
stay alike while the weights that produced the prediction are gone explains the input, not the model (edge
detectors, and some gradient ⊙ input variants, do this); it is flagged.

Conventions:

- **Blocks** (`randomisation_units`): the network's direct children that hold parameters, in registration order
  (for timm and torchvision networks the order of the forward pass); a ``Sequential`` / ``ModuleList`` child
  (timm's ``stages``, ``blocks``, torchvision's ``features``) contributes its own children instead. The cascade
  randomises them from the last one to the first, cumulatively: step ``k`` has the top ``k`` blocks randomised.
- **Randomisation** (`randomise_`): every submodule with a ``reset_parameters`` method gets it (PyTorch's own
  initialisation; batch-norm statistics are reset too), under a torch generator seeded by ``seed`` (the global
  random state is restored afterwards); a parameter outside such modules is redrawn as normal noise with its own
  standard deviation. The trained network is never touched: the cascade works on a deep copy.
- **Similarity**: per image, the Spearman rank correlation of the maps before and after (Adebayo et al.'s main
  measure; computed as `visiondistill.explain.metrics.saliency_agreement_per_image` does) and SSIM (torchmetrics,
  Gaussian window 11, data range 1; maps are in [0, 1]). A map that becomes constant has no rank correlation: the
  correlation is taken as 0 there, the map no longer says anything.
- **Flag**: a method is flagged when the mean Spearman correlation with every block randomised is still at least
  ``threshold`` (default 0.5).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from visiondistill.core.errors import ConfigError
from visiondistill.explain.metrics import saliency_agreement_per_image

__all__ = ["SanityResult", "cascading_randomisation", "map_similarity", "randomisation_units", "randomise_"]

_CONTAINERS = (nn.Sequential, nn.ModuleList)


def randomisation_units(network: nn.Module) -> list[str]:
    """The module paths of the network's parameterised blocks, in forward order (see the module docstring).

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)))
        >>> randomisation_units(net)
        ['0', '2.0', '2.1']
    """
    units = []
    for name, child in network.named_children():
        if not _has_parameters(child):
            continue
        if isinstance(child, _CONTAINERS) and len(child) > 1:
            units += [f"{name}.{sub}" for sub, grandchild in child.named_children() if _has_parameters(grandchild)]
        else:
            units.append(name)
    return units


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


@torch.no_grad()
def randomise_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialises every parameter of ``module`` in place (see the module docstring); returns it."""
    devices = [p.device for p in module.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        covered: set[int] = set()
        for submodule in module.modules():
            reset = getattr(submodule, "reset_parameters", None)
            if callable(reset):
                reset()
                covered |= {id(p) for p in submodule.parameters()}
        for parameter in module.parameters():
            if id(parameter) not in covered:
                scale = float(parameter.std()) if parameter.numel() > 1 else 1.0
                parameter.copy_(torch.randn_like(parameter) * (scale or 1.0))
    return module


def map_similarity(before: Tensor, after: Tensor) -> dict[str, Tensor]:
    """Per-image Spearman rank correlation and SSIM of two ``N×H×W`` batches of maps in [0, 1].

    Returns:
        ``spearman`` and ``ssim``, ``(N,)`` float32 tensors (a constant map's correlation counts 0).
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    before, after = before.detach().float().cpu(), after.detach().float().cpu()
    spearman = saliency_agreement_per_image(before, after)["spearman"].float()
    spearman = torch.nan_to_num(spearman, nan=0.0)
    window = min(11, *(s - (1 - s % 2) for s in before.shape[-2:]))
    ssim = structural_similarity_index_measure(
        after[:, None], before[:, None], data_range=1.0, kernel_size=window, reduction="none"
    )
    return {"spearman": spearman, "ssim": ssim.reshape(-1).float()}


@dataclass
class SanityResult:
    """The cascade of one explanation method on one network.

    Attributes:
        units: The blocks randomised, in cascade order (top first); step ``k`` has ``units[:k + 1]`` randomised.
        spearman: ``(steps, N)`` rank correlations with the trained network's maps.
        ssim: ``(steps, N)`` SSIM with the trained network's maps.
        threshold: The flag's threshold on the last step's mean rank correlation.
        constant: ``(N,)`` whether the trained network's map of each image is constant (it ranks nothing, so its
            correlations say nothing: an untrained detector's all-zero maps, a 1×1 CAM).
    """

    units: list[str]
    spearman: Tensor
    ssim: Tensor
    threshold: float = 0.5
    constant: Tensor | None = None

    @property
    def applicable(self) -> bool:
        """Whether some trained map varies, so that the check means something."""
        return self.constant is None or not bool(self.constant.all())

    @property
    def final_spearman(self) -> float:
        """Mean rank correlation with every block randomised."""
        return float(self.spearman[-1].mean())

    @property
    def flagged(self) -> bool:
        """Whether the maps survive the randomisation of the whole network (the method fails the check)."""
        return self.final_spearman >= self.threshold

    def curve(self) -> list[tuple[str, float, float]]:
        """Per step: the last block randomised, the mean rank correlation and the mean SSIM."""
        return [(unit, float(self.spearman[k].mean()), float(self.ssim[k].mean())) for k, unit in enumerate(self.units)]


def cascading_randomisation(
    network: nn.Module,
    explain: Callable[[nn.Module], Tensor],
    units: Sequence[str] | None = None,
    threshold: float = 0.5,
    seed: int = 0,
) -> SanityResult:
    """Cascading randomisation of a network's blocks, top first, and the similarity of each step's maps.

    Args:
        network: The trained network (left unchanged; a deep copy is randomised).
        explain: Makes the ``N×H×W`` maps of a network (the copy, with the trained network's module paths), for
            fixed images and targets — e.g. ``lambda net: network_maps(adapter, net, "gradcam", images, targets)``
            (`visiondistill.explain.attribution.network_maps`).
        units: Module paths to randomise, in forward order; default `randomisation_units`.
        threshold: Flag threshold (mean rank correlation after the last step).
        seed: Seed of the re-initialisation (block ``k`` uses ``seed + k``).

    Returns:
        The result.

    Raises:
        ConfigError: When the network has no parameterised block, or a unit names no module.
    """
    units = list(units) if units is not None else randomisation_units(network)
    if not units:
        raise ConfigError(f"{type(network).__name__} has no parameterised block to randomise")
    if not 0 <= threshold <= 1:
        raise ConfigError(f"threshold must be in [0, 1], got {threshold!r}")
    reference = explain(network)
    copied = copy.deepcopy(network).eval()
    spearman, ssim = [], []
    order = list(reversed(units))
    for k, path in enumerate(order):
        try:
            block = copied.get_submodule(path)
        except AttributeError as error:
            raise ConfigError(f"{type(network).__name__} has no module {path!r} to randomise") from error
        randomise_(block, seed + k)
        similarity = map_similarity(reference, explain(copied))
        spearman.append(similarity["spearman"])
        ssim.append(similarity["ssim"])
    flat = reference.detach().flatten(1)
    constant = (flat.max(dim=1).values - flat.min(dim=1).values) <= 1e-12
    return SanityResult(order, torch.stack(spearman), torch.stack(ssim), float(threshold), constant.cpu())
