"""Robustness of explanations: how far a model's map moves when its input moves a little.

A student may agree with its teacher on clean images and still hold its explanation less firmly. Two measures, per
image, for any method (`visiondistill.explain.attribution.network_maps` makes the maps) and any task with a scalar
target:

- ``max_sensitivity`` ↓ (Yeh et al., "On the (In)fidelity and Sensitivity of Explanations", NeurIPS 2019), through
  Captum's ``captum.metrics.sensitivity_max``: the largest relative change of the map,
  ``max_δ ‖m(x + δ) − m(x)‖_F / ‖m(x)‖_F``, over ``n_samples`` draws of uniform noise ``δ ∈ [−r, r]^{C×H×W}``
  (Captum's default perturbation; ``radius`` r = 0.02 in the model's input space, i.e. after normalisation — about
  1.3/255 of the pixel range for a channel std of 0.25). The noise comes from the torch generator seeded by ``seed``.
- ``pgd_spearman`` ↑, ``pgd_ssim`` ↑ and ``pgd_score_drop``: the map before and after a small adversarial
  perturbation, projected gradient descent (Madry et al., ICLR 2018) on the explained score itself: ``steps`` = 10
  signed-gradient steps of ``2.5 ε / steps`` that lower the score, each projected back into the L∞ ball of radius
  ``ε`` = 0.03 around the image (input space, after normalisation; no random start, so the attack is deterministic).
  The maps of ``x`` and ``x_adv`` are compared for the same target (Spearman rank correlation and SSIM, as in
  `visiondistill.explain.sanity.map_similarity`); ``pgd_score_drop = s(x) − s(x_adv)`` says how hard the attack hit
  the score.

Both ask the same question of teacher and student: does the student's explanation break more easily? Cost: max-
sensitivity explains ``n_samples + 1`` versions of every image; PGD ``steps`` forwards and backwards per batch and
two explanations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from visiondistill.core.errors import ConfigError
from visiondistill.explain.attribution import target_scores
from visiondistill.explain.sanity import map_similarity

__all__ = ["ROBUSTNESS_HIGHER_IS_BETTER", "Explainer", "max_sensitivity", "pgd_attack", "pgd_explanation_shift"]

#: Makes ``N×H×W`` maps of images for one target callable per image.
Explainer = Callable[[Tensor, Sequence[Callable[[Tensor], Tensor]]], Tensor]

#: Whether a higher value of each measure means a more robust explanation (``pgd_score_drop`` describes the attack).
ROBUSTNESS_HIGHER_IS_BETTER: dict[str, bool] = {"max_sensitivity": False, "pgd_spearman": True, "pgd_ssim": True}


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


def max_sensitivity(
    explain: Explainer,
    images: Tensor,
    targets: Sequence[Callable[[Tensor], Tensor]],
    radius: float = 0.02,
    n_samples: int = 10,
    seed: int = 0,
) -> Tensor:
    """Captum's max-sensitivity of each image's map (see the module docstring), ``(N,)`` float32 on the CPU.

    Args:
        explain: Makes maps of a batch for its targets (e.g. ``lambda x, t: network_maps(adapter, net, "gradcam",
            x, t)``).
        images: ``N×C×H×W`` inputs.
        targets: One target callable per image.
        radius: Half-width of the uniform input noise (input space).
        n_samples: Noise draws per image.
        seed: Seed of the noise.
    """
    from captum.metrics import sensitivity_max

    _check_positive("radius", radius)
    _check_positive("n_samples", n_samples)
    devices = [images.device] if images.device.type == "cuda" else []
    values = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for i, target in enumerate(targets):
            # Captum expands one image into its noisy copies: every copy is explained for that image's target.
            def explain_copies(
                inputs: Tensor | tuple[Tensor], target: Callable[[Tensor], Tensor] = target
            ) -> tuple[Tensor]:
                # Captum passes the copies as a tensor or a 1-tuple, and iterates over what comes back: a 1-tuple.
                inputs = inputs[0] if isinstance(inputs, tuple) else inputs
                return (explain(inputs, [target] * inputs.shape[0]).to(inputs.device),)

            values.append(
                sensitivity_max(
                    explain_copies, images[i : i + 1], perturb_radius=float(radius), n_perturb_samples=int(n_samples)
                )
            )
    return torch.cat(values).float().cpu().reshape(len(targets))


def pgd_attack(
    model: nn.Module,
    images: Tensor,
    targets: Sequence[Callable[[Tensor], Tensor]],
    epsilon: float = 0.03,
    steps: int = 10,
    step_size: float | None = None,
) -> Tensor:
    """Projected gradient descent that lowers each image's explained score within an L∞ ball of radius ``epsilon``.

    ``x_{t+1} = clip_{x ± ε}(x_t − α · sign ∇_x Σ_i s_i(x_t))`` with ``α = 2.5 ε / steps`` by default, from ``x_0 = x``.

    Args:
        model: The model whose outputs the targets index (`SaliencyAdapter.cam_model`), in eval mode.
        images: ``N×C×H×W`` inputs.
        targets: One target callable per image.
        epsilon: Radius of the ball (input space).
        steps: Gradient steps.
        step_size: α (default ``2.5 ε / steps``).

    Returns:
        The perturbed images (detached), ``‖x_adv − x‖_∞ <= ε``.
    """
    _check_positive("epsilon", epsilon)
    _check_positive("steps", steps)
    alpha = float(step_size) if step_size is not None else 2.5 * float(epsilon) / int(steps)
    original = images.detach()
    adversarial = original.clone()
    for _ in range(int(steps)):
        adversarial.requires_grad_(True)
        with torch.enable_grad():
            score = target_scores(model, adversarial, targets).sum()
            (gradient,) = torch.autograd.grad(score, adversarial)
        with torch.no_grad():
            adversarial = adversarial - alpha * gradient.sign()
            adversarial = torch.min(torch.max(adversarial, original - epsilon), original + epsilon)
    return adversarial.detach()


def pgd_explanation_shift(
    explain: Explainer,
    model: nn.Module,
    images: Tensor,
    targets: Sequence[Callable[[Tensor], Tensor]],
    epsilon: float = 0.03,
    steps: int = 10,
) -> dict[str, Tensor]:
    """How far each map moves under `pgd_attack` (see the module docstring).

    Args:
        explain: Makes maps of a batch for its targets.
        model: The model the attack lowers the score of (the one ``explain`` explains).
        images: ``N×C×H×W`` inputs.
        targets: One target callable per image.
        epsilon: L∞ radius of the attack (input space).
        steps: PGD steps.

    Returns:
        ``pgd_spearman``, ``pgd_ssim`` and ``pgd_score_drop``: ``(N,)`` float32 tensors on the CPU.
    """
    adversarial = pgd_attack(model, images, targets, epsilon, steps)
    with torch.no_grad():
        drop = target_scores(model, images, targets) - target_scores(model, adversarial, targets)
    similarity = map_similarity(explain(images, targets), explain(adversarial, targets))
    return {
        "pgd_spearman": similarity["spearman"],
        "pgd_ssim": similarity["ssim"],
        "pgd_score_drop": drop.float().cpu().reshape(-1),
    }
