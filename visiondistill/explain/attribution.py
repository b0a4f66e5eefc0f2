"""Attribution methods beyond CAM, through Captum: integrated gradients, occlusion, KernelSHAP and LIME.

A CAM explains a layer, so its map has that layer's resolution (4×4 for the last stage of a 64 px ResNet); these
methods attribute the explained score to the input pixels, at the image's resolution. They explain the same scalar
as the CAM path: the saliency adapter's target callable of each image applied to the wrapped model's output
(`visiondistill.core.saliency.SaliencyAdapter.targets`: a class logit, a class's logits over a mask, a keypoint's
heatmap peak, a box score), so they work for every task with a saliency adapter.

Maps come out in the form of the CAM maps (`visiondistill.explain.cam.compute_cams`): one ``H×W`` float32 map per
image, on the CPU, non-negative and scaled to [0, 1] per image. The signed attribution (``N×C×H×W``) is summed over
channels; ``sign="positive"`` (the default) keeps the evidence *for* the target, as a CAM's ReLU does, ``"absolute"``
its magnitude. Then ``(map − min) / (max − min)`` per image (all zeros for a constant map), grad-cam's
``scale_cam_image`` without its ``1e-7`` (attributions can be smaller than that).

Conventions (each overridable through `attribute` / `compute_attributions` keyword arguments):

- **integrated_gradients** (Sundararajan et al., ICML 2017): ``n_steps=32`` Gauss–Legendre steps from a baseline
  (``baseline="zero"``: zero in the model's input space — the dataset mean when inputs are normalised; ``"blur"``:
  the image blurred with a Gaussian of kernel 11, σ 5, as Petsiuk et al. use for insertion).
- **occlusion** (Zeiler & Fergus, ECCV 2014): a square window of ``window`` pixels (default: an eighth of the
  shorter side, at least 2) over all channels, moved by ``stride`` (default: half the window), replaced by the
  baseline; the attribution of a pixel is the mean score drop of the windows covering it.
- **kernel_shap** (Lundberg & Lee, NeurIPS 2017) and **lime** (Ribeiro et al., KDD 2016): the features are the cells
  of a regular ``grid × grid`` partition of the image (default 8×8; each cell covers all channels, the last row and
  column of cells take the remainder), switched off by replacing them with the baseline; ``n_samples=128``
  coalitions per image drawn by Captum with the torch generator seeded by ``seed`` (the global random state is
  restored afterwards). Every pixel and channel of a cell carries the cell's weight, so the map has ``grid × grid``
  distinct values —
  a regular grid rather than SLIC superpixels, so that the resolution is known and the same for every image.
  KernelSHAP fits Captum's weighted linear regression (Shapley kernel); LIME a ridge regression (alpha 1, the
  ``lime`` package's default) weighted by Captum's exponential cosine kernel (width 1).

Cost (CPU, one thread, 32 px ``test_resnet``, measured with ``tests/explain/test_attribution.py``'s models): a CAM
needs one forward and one backward per batch; integrated gradients ``n_steps`` forwards and backwards per image;
occlusion one forward per window position (``((H − w) / s + 1)²``, 15² = 225 at 32 px); KernelSHAP and LIME
``n_samples`` forwards per image.

Captum is imported when a map is computed, not when this module is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from visiondistill.core.errors import ConfigError
from visiondistill.core.recorder import LayerSpec, resolve_layer
from visiondistill.core.saliency import SaliencyAdapter

__all__ = [
    "ATTRIBUTION_METHODS",
    "attribute",
    "attribution_method",
    "baseline_images",
    "compute_attributions",
    "explanation_maps",
    "grid_feature_mask",
    "is_attribution_method",
    "network_maps",
    "scale_maps",
    "target_scores",
]

#: Captum-based methods by name (aliases map to these).
ATTRIBUTION_METHODS: tuple[str, ...] = ("integrated_gradients", "occlusion", "kernel_shap", "lime")
_ALIASES = {"ig": "integrated_gradients", "integratedgradients": "integrated_gradients", "kernelshap": "kernel_shap"}

Baseline = Literal["zero", "blur"]
Sign = Literal["positive", "absolute"]


def _key(name: str) -> str:
    key = str(name).lower().replace("-", "_")
    return _ALIASES.get(key.replace("_", ""), key)


def is_attribution_method(name: str) -> bool:
    """Whether ``name`` is a Captum attribution method (`ATTRIBUTION_METHODS`, or an alias such as ``ig``)."""
    return _key(name) in ATTRIBUTION_METHODS


def attribution_method(name: str) -> str:
    """The canonical name of an attribution method.

    Raises:
        ConfigError: For an unknown name; the message lists the valid ones.

    Example::

        >>> attribution_method("Integrated-Gradients"), attribution_method("kernelshap")
        ('integrated_gradients', 'kernel_shap')
    """
    key = _key(name)
    if key not in ATTRIBUTION_METHODS:
        raise ConfigError(f"unknown attribution method {name!r}; valid methods are: {', '.join(ATTRIBUTION_METHODS)}")
    return key


def baseline_images(images: Tensor, kind: Baseline = "zero") -> Tensor:
    """The reference images methods and perturbation metrics replace pixels with.

    Args:
        images: ``N×C×H×W`` inputs, as the model takes them.
        kind: ``"zero"`` (zeros: the dataset mean when inputs are normalised) or ``"blur"`` (Gaussian blur, kernel
            11, σ 5 — RISE's insertion substrate — kernel cut to the image for images under 11 px).

    Raises:
        ConfigError: For another kind.
    """
    if kind == "zero":
        return torch.zeros_like(images)
    if kind == "blur":
        from torchvision.transforms.functional import gaussian_blur

        size = min(11, *(s - (1 - s % 2) for s in images.shape[-2:]))
        return gaussian_blur(images, kernel_size=[size, size], sigma=[5.0, 5.0])
    raise ConfigError(f"baseline must be 'zero' or 'blur', got {kind!r}")


def grid_feature_mask(height: int, width: int, grid: int) -> Tensor:
    """The ``1×1×H×W`` feature mask of KernelSHAP and LIME: ``grid × grid`` cells numbered row by row.

    Example::

        >>> grid_feature_mask(4, 4, 2)[0, 0].tolist()
        [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    """
    if isinstance(grid, bool) or not isinstance(grid, int) or not 1 <= grid <= min(height, width):
        raise ConfigError(f"grid must be an integer between 1 and the image side ({min(height, width)}), got {grid!r}")
    rows = torch.clamp(torch.arange(height) * grid // height, max=grid - 1)
    cols = torch.clamp(torch.arange(width) * grid // width, max=grid - 1)
    return (rows[:, None] * grid + cols[None, :]).view(1, 1, height, width)


def target_scores(model: nn.Module, images: Tensor, targets: Sequence[Callable[[Tensor], Tensor]]) -> Tensor:
    """Each image's explained score: ``targets[i](model(images)[i])``, shape ``(N,)`` (with autograd as called)."""
    outputs = model(images)
    return torch.stack([target(outputs[i]) for i, target in enumerate(targets)]).reshape(len(targets))


def _image_forward(model: nn.Module, target: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """A forward of batches of one image's variants (Captum expands inputs): the one target on every output."""

    def forward(inputs: Tensor) -> Tensor:
        outputs = model(inputs)
        return torch.stack([target(outputs[j]) for j in range(inputs.shape[0])]).reshape(inputs.shape[0])

    return forward


def attribute(
    method: str,
    model: nn.Module,
    images: Tensor,
    targets: Sequence[Callable[[Tensor], Tensor]],
    *,
    baseline: Baseline = "zero",
    n_steps: int = 32,
    window: int | None = None,
    stride: int | None = None,
    grid: int = 8,
    n_samples: int = 128,
    batch_size: int = 32,
    seed: int = 0,
) -> Tensor:
    """Signed Captum attributions ``N×C×H×W`` of each image's explained score (see the module docstring).

    Images are explained one at a time (each with its own target), the variants of one image in batches of up to
    ``batch_size``. Run it with gradients enabled (integrated gradients needs them); parameters may be frozen.

    Args:
        method: A name of `ATTRIBUTION_METHODS` (or an alias).
        model: The model whose outputs ``targets`` index (`SaliencyAdapter.cam_model` of a network), in eval mode.
        images: Input batch ``N×C×H×W`` on the model's device.
        targets: One target callable per image.
        baseline: ``"zero"`` or ``"blur"`` (`baseline_images`).
        n_steps: Integrated-gradients steps.
        window: Occlusion window side in pixels (default: a eighth of the shorter side, at least 2).
        stride: Occlusion stride (default: half the window, at least 1).
        grid: Cells per side of the KernelSHAP / LIME feature mask (`grid_feature_mask`).
        n_samples: KernelSHAP / LIME coalitions per image.
        batch_size: Variants of one image per forward pass.
        seed: Seed of the KernelSHAP / LIME sampling.

    Returns:
        Float attributions of the images' shape, on the images' device.

    Raises:
        ConfigError: For an unknown method or a bad setting.
    """
    import captum.attr as captum_attr

    name = attribution_method(method)
    if len(targets) != images.shape[0]:
        raise ConfigError(f"{len(targets)} targets for {images.shape[0]} images; give one target per image")
    channels, height, width = images.shape[1:]
    window = window if window is not None else max(2, min(height, width) // 8)
    stride = stride if stride is not None else max(1, window // 2)
    for key, value in (("n_steps", n_steps), ("window", window), ("stride", stride), ("n_samples", n_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    references = baseline_images(images, baseline)
    mask = grid_feature_mask(height, width, grid).to(images.device) if name in ("kernel_shap", "lime") else None
    results = []
    for i, target in enumerate(targets):
        forward = _image_forward(model, target)
        image, reference = images[i : i + 1].detach(), references[i : i + 1].detach()
        if name == "integrated_gradients":
            result = captum_attr.IntegratedGradients(forward).attribute(
                image, baselines=reference, n_steps=n_steps, internal_batch_size=batch_size
            )
        elif name == "occlusion":
            result = captum_attr.Occlusion(forward).attribute(
                image,
                sliding_window_shapes=(channels, window, window),
                strides=(channels, stride, stride),
                baselines=reference,
                perturbations_per_eval=batch_size,
            )
        else:
            if name == "kernel_shap":
                explainer = captum_attr.KernelShap(forward)
            else:
                from captum._utils.models.linear_model import SkLearnRidge

                # The lime package's Ridge(alpha=1), not Captum's Lasso(alpha=0.01), which zeroes every weight of
                # a score that moves by less than about 0.01 between coalitions.
                explainer = captum_attr.Lime(forward, interpretable_model=SkLearnRidge(alpha=1.0))
            with torch.random.fork_rng(devices=[images.device] if images.device.type == "cuda" else []):
                torch.manual_seed(seed + i)
                result = explainer.attribute(
                    image,
                    baselines=reference,
                    feature_mask=mask,
                    n_samples=n_samples,
                    perturbations_per_eval=batch_size,
                )
        results.append(result.detach())
    return torch.cat(results)


def scale_maps(attributions: Tensor, sign: Sign = "positive") -> Tensor:
    """Signed ``N×C×H×W`` attributions as CAM-like maps ``N×H×W`` in [0, 1] (float32, CPU).

    Channels are summed; ``"positive"`` keeps the part above zero, ``"absolute"`` the magnitude; each map is then
    min-max scaled as grad-cam's ``scale_cam_image`` does (a constant map becomes all zeros), without its ``1e-7``
    added to the range.
    """
    maps = attributions.detach().float().sum(dim=1).cpu()
    if sign == "positive":
        maps = maps.clamp(min=0)
    elif sign == "absolute":
        maps = maps.abs()
    else:
        raise ConfigError(f"sign must be 'positive' or 'absolute', got {sign!r}")
    flat = maps.flatten(1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    peak = flat.max(dim=1, keepdim=True).values
    # Not grad-cam's ``+ 1e-7``: attributions can be far smaller than activations, and the peak must reach 1.
    flat = torch.where(peak > 0, flat / peak.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return flat.view_as(maps)


def compute_attributions(
    method: str,
    model: nn.Module,
    images: Tensor,
    targets: Sequence[Callable[[Tensor], Tensor]],
    sign: Sign = "positive",
    **options: Any,
) -> Tensor:
    """Attribution maps of a batch in the CAM maps' form: ``(N, H, W)`` float32 in [0, 1] on the CPU.

    Args:
        method: A name of `ATTRIBUTION_METHODS`.
        model: The model to explain (`SaliencyAdapter.cam_model`).
        images: Input batch ``N×C×H×W`` (on the model's device).
        targets: One target callable per image.
        sign: ``"positive"`` or ``"absolute"`` (`scale_maps`).
        **options: Settings of `attribute` (``baseline``, ``n_steps``, ``window``, ``stride``, ``grid``, …).

    Returns:
        The maps.
    """
    with torch.enable_grad():
        return scale_maps(attribute(method, model, images, targets, **options), sign)


def explanation_maps(
    method: str,
    model: nn.Module,
    images: Tensor,
    targets: Sequence[Callable[[Tensor], Tensor]],
    layers: Sequence[nn.Module] = (),
    reshape_transform: Callable[[object], Tensor] | None = None,
    **options: Any,
) -> Tensor:
    """Maps of any method by name: a grad-cam method at ``layers``, or a Captum method at the input.

    It changes the model's train flags and gradients: run it in `visiondistill.explain.probe.untouched_training_state`.

    Args:
        method: A grad-cam name (`visiondistill.explain.cam.CAM_METHODS`) or an attribution name.
        model: The wrapped model (`SaliencyAdapter.cam_model`), in eval mode.
        images: Input batch on the model's device.
        targets: One target callable per image.
        layers: Target layers of a CAM (unused by attribution methods).
        reshape_transform: The CAM's ``reshape_transform``.
        **options: Settings of `compute_attributions` (ignored by CAM methods).

    Returns:
        ``(N, H, W)`` float32 maps in [0, 1] on the CPU.

    Raises:
        ConfigError: A CAM method without layers.
        ValueError: An unknown method (the message lists both families).
    """
    if is_attribution_method(method):
        return compute_attributions(method, model, images, targets, **options)
    from visiondistill.explain.cam import cam_method, compute_cams

    try:
        cam_class = cam_method(method)
    except ValueError as error:
        raise ConfigError(f"{error}; or an attribution method: {', '.join(ATTRIBUTION_METHODS)}") from error
    if not layers:
        raise ConfigError(f"the CAM method {method!r} needs target layers")
    with torch.enable_grad():
        return compute_cams(cam_class, model, layers, images, targets, reshape_transform)


def network_maps(
    adapter: SaliencyAdapter,
    network: nn.Module,
    method: str,
    images: Tensor,
    targets: Sequence[Callable[[Tensor], Tensor]],
    layers: Sequence[LayerSpec] = (-1,),
    **options: Any,
) -> Tensor:
    """Maps of a trained network (not yet wrapped) for a method by name, as the callbacks and the report make them.

    The network is wrapped by ``adapter.cam_model`` and put in eval mode; a CAM method explains ``layers`` (module
    paths or stage indices, resolved on ``network``; several are averaged), an attribution method the input.

    Args:
        adapter: The task's saliency adapter.
        network: The network.
        method: A grad-cam or attribution method name.
        images: Input batch on the network's device.
        targets: One target callable per image.
        layers: CAM layers.
        **options: Settings of `compute_attributions`.

    Returns:
        ``(N, H, W)`` float32 maps in [0, 1] on the CPU.
    """
    wrapped = adapter.cam_model(network).eval()
    if is_attribution_method(method):
        return explanation_maps(method, wrapped, images, targets, **options)
    resolved = [resolve_layer(network, layer) for layer in layers]
    transform = adapter.reshape_transform(network, [path for path, _ in resolved])
    return explanation_maps(method, wrapped, images, targets, [module for _, module in resolved], transform)
