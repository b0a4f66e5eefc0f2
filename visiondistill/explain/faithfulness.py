"""Faithfulness of a saliency map to the model it explains: does removing what the map calls important hurt?

Agreement says whether two models' maps look alike; faithfulness says whether a model's own map points at what its
score depends on. Each measure perturbs the input by the map and reads the explained score again — the adapter's
scalar target (`visiondistill.core.saliency.SaliencyAdapter.targets`), so it works for every task with one. For
classification, pass the targets through `probability_targets` first: the references score class probabilities
(RISE, Grad-CAM++), and a probability is bounded, so curves of two models are comparable; the other tasks' scores
(a class's logits over a mask, a keypoint peak, a box score) are used as they are.

Measures (per image; `faithfulness_scores` returns them all; ``↑`` higher is more faithful, ``↓`` lower):

- ``deletion_auc`` ↓ and ``insertion_auc`` ↑ (Petsiuk et al., "RISE", BMVC 2018; implemented here after the authors'
  ``evaluation.py``): pixels are ranked by the map (descending, ties in row-major order), and in ``steps`` equal
  steps of ``ceil(H·W / steps)`` pixels (all channels) deletion replaces them with the baseline (default zeros, the
  dataset mean for normalised inputs) and insertion puts them back into the baseline (default the blurred image,
  Gaussian kernel 11, σ 5). The score is read after every step (``steps + 1`` values, the first on the unchanged
  start); the AUC is the trapezoid rule over the removed fraction in [0, 1]: ``(Σ s − s₀/2 − s_last/2) / steps``.
- ``road_morf`` ↓, ``road_lerf`` ↑ and ``road_combined`` ↑ (Rong et al., "A Consistent and Efficient Evaluation
  Strategy for Attribution Methods", ICML 2022), through pytorch-grad-cam's ``metrics.road``: the pixels above
  (most-relevant-first) or below (least-relevant-first) each percentile of the map (10, 20 … 90) are imputed by
  noisy linear interpolation of their neighbours, and the score change (after − before) is averaged over the
  percentiles; ``road_combined = (lerf − morf) / 2`` as ``ROADCombined`` computes it. The imputation noise (σ 0.01)
  is drawn from the torch generator seeded by ``seed`` (the global random state is restored afterwards).
- ``average_drop`` ↓ and ``increase_in_confidence`` ↑ (Chattopadhay et al., "Grad-CAM++", WACV 2018), through
  pytorch-grad-cam's ``metrics.cam_mult_image``: the input multiplied by the map (``x · m``, the map broadcast
  over channels) is scored again; ``average_drop = max(0, Y − O) / Y`` (NaN when ``Y <= 0``, which only a raw
  score can be) and ``increase_in_confidence = [O > Y]`` for the score ``Y`` before and ``O`` after.

Cost (measured on the CPU, one thread, ``timm``'s ``test_resnet``, 8 images, ``steps=16``; ``pytest -m slow -s
tests/explain/test_faithfulness.py -k cost``): deletion and insertion together 28 ms per image at 32 px and 69 ms
at 64 px (``2 (steps + 1)`` forwards per image); ROAD 200 ms and 420 ms (18 forwards and 18 sparse linear solves of
up to 0.9·H·W unknowns per image — the solves grow faster than the pixel count); average drop and increase 4 ms
(two forwards per batch). About 0.25 s per image and model at 32 px, 0.5 s at 64 px, most of it ROAD: this is why
the probe callback runs them only every ``faithfulness_every_n_epochs`` epochs (off by default).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from visiondistill.core.errors import ConfigError
from visiondistill.explain.attribution import Baseline, baseline_images, target_scores

__all__ = [
    "FAITHFULNESS_HIGHER_IS_BETTER",
    "FAITHFULNESS_KEYS",
    "area_under_curve",
    "confidence_change",
    "faithfulness_scores",
    "perturbation_curves",
    "probability_targets",
    "road_scores",
]

#: Whether a higher value of each measure means a more faithful map.
FAITHFULNESS_HIGHER_IS_BETTER: dict[str, bool] = {
    "deletion_auc": False,
    "insertion_auc": True,
    "road_morf": False,
    "road_lerf": True,
    "road_combined": True,
    "average_drop": False,
    "increase_in_confidence": True,
}
FAITHFULNESS_KEYS: tuple[str, ...] = tuple(FAITHFULNESS_HIGHER_IS_BETTER)

#: The percentiles of ROAD (pytorch-grad-cam's and the paper's).
ROAD_PERCENTILES: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def probability_targets(targets: Sequence[Callable[[Tensor], Tensor]]) -> list[Callable[[Tensor], Tensor]]:
    """Classification targets scoring the class probability (softmax) instead of the logit; others unchanged.

    grad-cam's ``ClassifierOutputTarget(c)`` becomes ``ClassifierOutputSoftmaxTarget(c)``; any other target (a
    segmentation region, a keypoint peak, a box score) is returned as it is.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

    return [
        ClassifierOutputSoftmaxTarget(t.category) if type(t) is ClassifierOutputTarget else t  # noqa: E721
        for t in targets
    ]


def area_under_curve(curves: Tensor) -> Tensor:
    """Trapezoid area of curves sampled at equal steps over [0, 1]: ``(Σ s − s₀/2 − s_last/2) / (len − 1)``.

    Example::

        >>> float(area_under_curve(torch.tensor([[1.0, 0.5, 0.0]])))
        0.5
    """
    return (curves.sum(dim=-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / (curves.shape[-1] - 1)


@torch.no_grad()
def perturbation_curves(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Sequence[Callable[[Tensor], Tensor]],
    mode: Literal["deletion", "insertion"] = "deletion",
    steps: int = 16,
    baseline: Baseline | None = None,
    batch_size: int = 64,
) -> Tensor:
    """The score after each step of deleting (or inserting) pixels in the map's order, ``(N, steps + 1)``.

    Args:
        model: The model whose outputs the targets index.
        images: ``N×C×H×W`` inputs on the model's device.
        maps: ``N×H×W`` saliency maps (any scale; only their order counts; resized bilinearly when smaller).
        targets: One target callable per image.
        mode: ``"deletion"`` (image → baseline) or ``"insertion"`` (baseline → image).
        steps: Number of steps; each moves ``ceil(H·W / steps)`` pixels (the last one what is left).
        baseline: ``"zero"`` or ``"blur"``; default RISE's: zeros for deletion, the blurred image for insertion.
        batch_size: Perturbed images per forward pass.

    Returns:
        Float32 scores on the CPU; column 0 is the unchanged start (image or baseline).

    Raises:
        ConfigError: For a bad mode, step count or shape.
    """
    if mode not in ("deletion", "insertion"):
        raise ConfigError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    maps = _maps_like(maps, images)
    count, pixels = images.shape[0], images.shape[-2] * images.shape[-1]
    reference = baseline_images(images, baseline or ("zero" if mode == "deletion" else "blur"))
    start, finish = (images, reference) if mode == "deletion" else (reference, images)
    per_step = math.ceil(pixels / steps)
    curves = torch.empty(count, steps + 1)
    for i in range(count):
        order = torch.argsort(maps[i].flatten().float(), descending=True, stable=True)
        # Step k has moved the first k·per_step pixels of the order: build all steps + 1 variants at once.
        rank = torch.empty(pixels, dtype=torch.long, device=order.device)
        rank[order] = torch.arange(pixels, device=order.device)
        moved = rank[None, :] < (torch.arange(steps + 1, device=order.device)[:, None] * per_step)
        moved = moved.view(steps + 1, 1, *images.shape[-2:]).to(images.device)
        variants = torch.where(moved, finish[i : i + 1], start[i : i + 1])
        scores = [target_scores(model, chunk, [targets[i]] * len(chunk)) for chunk in variants.split(batch_size)]
        curves[i] = torch.cat(scores).float().cpu()
    return curves


def _maps_like(maps: Tensor, images: Tensor) -> Tensor:
    maps = torch.as_tensor(maps).detach().float()
    if maps.ndim != 3 or maps.shape[0] != images.shape[0]:
        raise ConfigError(f"maps must be N×H×W with N = {images.shape[0]} images, got shape {tuple(maps.shape)}")
    if tuple(maps.shape[-2:]) != tuple(images.shape[-2:]):
        maps = torch.nn.functional.interpolate(maps[:, None], size=images.shape[-2:], mode="bilinear")[:, 0]
    return maps.to(images.device)


@torch.no_grad()
def road_scores(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Sequence[Callable[[Tensor], Tensor]],
    percentiles: Sequence[int] = ROAD_PERCENTILES,
    seed: int = 0,
) -> dict[str, Tensor]:
    """ROAD most-relevant-first, least-relevant-first and combined scores per image (pytorch-grad-cam's classes).

    Returns:
        ``road_morf``, ``road_lerf``, ``road_combined``: ``(N,)`` float32 score changes (after − before).
    """
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage

    cams = _maps_like(maps, images).cpu().numpy()
    devices = [images.device] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
        # grad-cam calls np.percentile on a torch tensor (numpy 2 deprecates its __array_wrap__); harmless here.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.manual_seed(seed)
        morf = ROADMostRelevantFirstAverage(list(percentiles))(images, cams, list(targets), model)
        lerf = ROADLeastRelevantFirstAverage(list(percentiles))(images, cams, list(targets), model)
    morf_t, lerf_t = torch.from_numpy(np.asarray(morf, np.float32)), torch.from_numpy(np.asarray(lerf, np.float32))
    return {"road_morf": morf_t, "road_lerf": lerf_t, "road_combined": (lerf_t - morf_t) / 2}


@torch.no_grad()
def confidence_change(
    model: nn.Module, images: Tensor, maps: Tensor, targets: Sequence[Callable[[Tensor], Tensor]]
) -> dict[str, Tensor]:
    """Average drop and increase in confidence per image of the input multiplied by the map (grad-cam's metric).

    Returns:
        ``average_drop`` (``max(0, Y − O) / Y``, NaN where ``Y <= 0``) and ``increase_in_confidence`` (0/1), ``(N,)``.
    """
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange

    cams = _maps_like(maps, images).cpu().numpy()
    before = target_scores(model, images, targets).float().cpu()
    change = torch.from_numpy(np.asarray(CamMultImageConfidenceChange()(images, cams, list(targets), model)))
    change = change.float().reshape(-1)
    drop = torch.clamp(-change, min=0) / before
    drop = torch.where(before > 0, drop, torch.full_like(drop, float("nan")))
    return {"average_drop": drop, "increase_in_confidence": (change > 0).float()}


def faithfulness_scores(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Sequence[Callable[[Tensor], Tensor]],
    steps: int = 16,
    deletion_baseline: Baseline = "zero",
    insertion_baseline: Baseline = "blur",
    road_percentiles: Sequence[int] = ROAD_PERCENTILES,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Every faithfulness measure of the module docstring, per image.

    Args:
        model: The explained model (`SaliencyAdapter.cam_model` of a network), in eval mode.
        images: ``N×C×H×W`` inputs on the model's device.
        maps: ``N×H×W`` maps of that model for these targets.
        targets: One target callable per image (`probability_targets` for classification).
        steps: Deletion / insertion steps.
        deletion_baseline: What deleted pixels become.
        insertion_baseline: What the insertion starts from.
        road_percentiles: ROAD's percentiles.
        seed: Seed of ROAD's imputation noise.

    Returns:
        `FAITHFULNESS_KEYS` → ``(N,)`` float32 tensors on the CPU.
    """
    deletion = perturbation_curves(model, images, maps, targets, "deletion", steps, deletion_baseline)
    insertion = perturbation_curves(model, images, maps, targets, "insertion", steps, insertion_baseline)
    result = {"deletion_auc": area_under_curve(deletion), "insertion_auc": area_under_curve(insertion)}
    result |= road_scores(model, images, maps, targets, road_percentiles, seed)
    result |= confidence_change(model, images, maps, targets)
    return {key: result[key] for key in FAITHFULNESS_KEYS}
