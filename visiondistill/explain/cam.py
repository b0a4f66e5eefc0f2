"""The CAM engine: grad-cam methods by name, and safe calls that give one map per image (or per layer)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from pytorch_grad_cam import (
    FEM,
    KPCA_CAM,
    AblationCAM,
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    RandomCAM,
    ScoreCAM,
    ShapleyCAM,
    XGradCAM,
)
from pytorch_grad_cam.base_cam import BaseCAM
from torch import Tensor, nn

from visiondistill.core.errors import ConfigError

__all__ = ["CAM_METHODS", "cam_method", "compute_cams", "compute_layer_cams"]

#: grad-cam methods by name. Every class here takes ``(model, target_layers, reshape_transform)``.
CAM_METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "gradcamelementwise": GradCAMElementWise,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
    "kpcacam": KPCA_CAM,
    "shapleycam": ShapleyCAM,
    "fem": FEM,
    "randomcam": RandomCAM,
}


def cam_method(name: str) -> type[BaseCAM]:
    """The grad-cam class of a method name (case-insensitive; ``-``/``_`` ignored, ``gradcampp`` = ``gradcam++``).

    Args:
        name: A key of `CAM_METHODS`.

    Returns:
        The class.

    Raises:
        ValueError: For an unknown name; the message lists the valid ones.

    Example::

        >>> cam_method("GradCAM++").__name__
        'GradCAMPlusPlus'
    """
    key = str(name).lower().replace("-", "").replace("_", "").replace("plusplus", "++").replace("pp", "++")
    if key not in CAM_METHODS:
        raise ConfigError(f"unknown CAM method {name!r}; valid methods are: {', '.join(CAM_METHODS)}")
    return CAM_METHODS[key]


@contextmanager
def _backward_from_target_layer(cam: BaseCAM, target_layers: Sequence[nn.Module]) -> Iterator[None]:
    """Makes the output of the one target layer a new leaf of the autograd graph while the block runs.

    Gradient methods need d(target)/d(activation) at the target layer only, but grad-cam's ``backward`` otherwise
    runs on through every earlier layer, to the input and to every parameter: for a last-stage CAM nearly all of
    the backward work. The activations and gradients at the layer, hence the maps, are the same. It cuts only with
    one target layer (a gradient must flow from a later target layer to an earlier one), only for methods that
    backpropagate to the target layer and no further, and only a tensor output (other outputs pass unchanged; the
    input requires grad either way, so the gradient then reaches the layer as before).
    """
    cut = (
        len(target_layers) == 1
        and cam.uses_gradients
        and getattr(cam, "detach", True)
        and not getattr(cam, "compute_input_gradient", False)
    )
    if not cut:
        yield
        return

    def start_graph(module: nn.Module, args: object, output: object) -> Tensor | None:
        if not isinstance(output, Tensor) or not output.is_floating_point():
            return None
        # A non-leaf copy, as the output was: the next layer may modify it in place.
        return output.detach().requires_grad_(True).clone()

    # Prepended, so that grad-cam's own hooks on the layer see (and hook the gradient of) the new output.
    handle = target_layers[0].register_forward_hook(start_graph, prepend=True)
    try:
        yield
    finally:
        handle.remove()


def _float32(inputs: Tensor) -> AbstractContextManager:
    """A context with autocast off, so that a CAM asked for under ``bf16-mixed``/``16-mixed`` is computed in float32.

    grad-cam turns activations and gradients into NumPy arrays, and NumPy has no bfloat16.
    """
    return torch.autocast(inputs.device.type, enabled=False)


def compute_cams(
    method: type[BaseCAM],
    model: nn.Module,
    target_layers: Sequence[nn.Module],
    images: Tensor,
    targets: Sequence[Callable[[Tensor], Tensor]],
    reshape_transform: Callable[[object], Tensor] | None = None,
) -> Tensor:
    """Class activation maps of a batch, one per image, at the images' resolution and scaled to [0, 1].

    The CAM object lives only inside a ``with`` block (its hooks and stored activations are released at the
    end), and its input is a fresh copy of ``images`` that requires grad, so gradients reach the target layers
    even when every parameter of the model is frozen; with a single target layer, backward stops at that layer
    (`_backward_from_target_layer`). Call it under ``torch.enable_grad()``: grad-cam does not enable gradients
    itself. It changes train flags and parameter gradients of ``model`` (grad-cam calls
    ``model.eval()`` and ``zero_grad()``): run it inside `visiondistill.explain.probe.untouched_training_state`.

    Args:
        method: A grad-cam class (see `cam_method`).
        model: The model to explain (usually `SaliencyAdapter.cam_model` of a network).
        target_layers: Modules of ``model`` whose activations are explained; several are averaged.
        images: Input batch ``N×C×H×W`` (on the model's device).
        targets: One target callable per image.
        reshape_transform: Turns a layer's output into ``N×C×h×w`` (see `TokenReshape`).

    Returns:
        Float32 maps ``(N, H, W)`` on the CPU.

    Raises:
        RuntimeError: When the method fails; grad-cam's context manager would otherwise swallow an IndexError.
    """
    inputs = images.detach().float().clone().requires_grad_(True)
    with (
        _float32(inputs),
        method(model=model, target_layers=list(target_layers), reshape_transform=reshape_transform) as cam,
    ):
        with _backward_from_target_layer(cam, target_layers):
            try:
                maps = cam(input_tensor=inputs, targets=list(targets))
            except IndexError as error:
                raise RuntimeError(f"{method.__name__} failed: {error}") from error
    return torch.from_numpy(maps).to(torch.float32)


def compute_layer_cams(
    method: type[BaseCAM],
    model: nn.Module,
    target_layers: Sequence[nn.Module],
    images: Tensor,
    targets: Sequence[Callable[[Tensor], Tensor]],
    reshape_transform: Callable[[object], Tensor] | None = None,
) -> list[Tensor]:
    """One CAM per target layer, each as `compute_cams` would give it for that layer alone, from a single pass.

    grad-cam computes a map per target layer and then averages them; this keeps each layer's map instead (scaled
    exactly as a single-layer CAM is), so comparing many stages costs one forward and one backward, not one per
    stage. A method that does not go through grad-cam's per-layer step falls back to one `compute_cams` per layer.

    Args:
        method: A grad-cam class (see `cam_method`).
        model: The model to explain.
        target_layers: Modules of ``model``, each run through the model's forward once.
        images: Input batch ``N×C×H×W``.
        targets: One target callable per image.
        reshape_transform: Turns a layer's output into ``N×C×h×w`` (for every layer).

    Returns:
        Float32 maps ``(N, H, W)`` on the CPU, one per layer, in the order of ``target_layers``.

    Raises:
        RuntimeError: When the method fails.
    """
    captured: list[Tensor] = []
    inputs = images.detach().float().clone().requires_grad_(True)
    with (
        _float32(inputs),
        method(model=model, target_layers=list(target_layers), reshape_transform=reshape_transform) as cam,
    ):
        aggregate = cam.aggregate_multi_layers

        def keep_each_layer(cam_per_layer: list) -> Any:
            captured.extend(torch.from_numpy(aggregate([layer])).to(torch.float32) for layer in cam_per_layer)
            return aggregate(cam_per_layer)

        cam.aggregate_multi_layers = keep_each_layer
        with _backward_from_target_layer(cam, target_layers):
            try:
                cam(input_tensor=inputs, targets=list(targets))
            except IndexError as error:
                raise RuntimeError(f"{method.__name__} failed: {error}") from error
    if len(captured) != len(target_layers):
        return [compute_cams(method, model, [layer], images, targets, reshape_transform) for layer in target_layers]
    return captured
