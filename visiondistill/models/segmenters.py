"""segmentation-models-pytorch segmenters described by a small, config-friendly spec.

Any smp architecture (``Unet``, ``FPN``, ``DeepLabV3Plus`` …) with any smp encoder (``resnet18``, ``mobilenet_v2`` …)
or timm encoder (``tu-`` prefix, e.g. ``tu-test_resnet``). Every model built here carries a ``feature_info`` list
(module path, channels and reduction of each encoder stage), so distillation and explanation callbacks can address
its encoder stages by index (``-1`` = the deepest stage), as they do for timm classifiers.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
from torch import Tensor, nn

from visiondistill.core.config import spec_from
from visiondistill.core.errors import ConfigError
from visiondistill.models.checkpoints import (
    CheckpointError,
    extract_state_dict,
    load_weights,
    read_checkpoint,
)

__all__ = ["SegmenterSpec", "create_segmenter", "encoder_feature_info", "segmenter_architectures"]

#: The key of the classifier weights of every smp model: its first dimension is the number of classes.
_HEAD_WEIGHT = "segmentation_head.0.weight"


def segmenter_architectures() -> list[str]:
    """The smp architecture names `SegmenterSpec.arch` accepts (case-insensitive)."""
    return sorted({cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()})


@dataclass
class SegmenterSpec:
    """What segmentation network to build and where its weights come from.

    Attributes:
        arch: smp architecture (``Unet``, ``UnetPlusPlus``, ``FPN``, ``PSPNet``, ``DeepLabV3``, ``DeepLabV3Plus``,
            ``Linknet``, ``MAnet``, ``PAN``, ``UPerNet``, ``Segformer``, ``DPT``). For a teacher it may be left out
            when ``checkpoint`` is one of our own runs: it is then read from the checkpoint, with the encoder.
        encoder_name: smp encoder (``resnet18`` …) or timm encoder with the ``tu-`` prefix (``tu-test_resnet``).
        encoder_weights: Pretrained encoder weights (``imagenet`` …) or ``None`` (random initialisation, the
            default). Named weights must already be in the local cache: runs are expected to be offline.
        in_channels: Input channels: 1 for grayscale (e.g. medical images), 3 for RGB.
        num_classes: Output classes; ``None`` takes the task's ``num_classes``.
        checkpoint: A local checkpoint: a ``.ckpt`` of a visiondistill segmentation run (its ``student`` weights)
            or a plain state dict (``.pt``/``.pth``/``.safetensors``).
        kwargs: Extra keyword arguments of the smp architecture (``decoder_channels``, ``encoder_depth`` …).
    """

    arch: str | None = None
    encoder_name: str | None = None
    encoder_weights: str | None = None
    in_channels: int = 3
    num_classes: int | None = None
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, value: SegmenterSpec | Mapping[str, Any], role: str = "model") -> SegmenterSpec:
        """Accepts a spec or a mapping (as stored in checkpoints).

        Raises:
            TypeError: On unknown keys (naming them and the valid ones) or another type.
        """
        return spec_from(cls, value, role, expected="a mapping with arch and encoder_name")


def create_segmenter(spec: SegmenterSpec, num_classes: int, role: str = "model") -> nn.Module:
    """Builds an smp segmenter from a spec, attaches its ``feature_info`` and loads its checkpoint, if any.

    Args:
        spec: The spec; its ``num_classes`` (when set) must equal ``num_classes``.
        num_classes: The task's number of classes (background included).
        role: ``"teacher"``/``"student"`` for messages.

    Returns:
        The model; its output is the logits ``N×num_classes×H×W``.

    Raises:
        ValueError: When the class counts disagree, ``in_channels`` is not 1 or 3, or the architecture or the
            encoder is unknown (the message lists valid or close names).
        CheckpointError: When the checkpoint is missing, unreadable, for another number of classes or otherwise
            does not fit.

    Example::

        >>> model = create_segmenter(SegmenterSpec(arch="Unet", encoder_name="tu-test_resnet"), num_classes=3)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
        >>> [stage["module"] for stage in model.feature_info][-1]
        'encoder.model.layer4'
    """
    if spec.num_classes is not None and spec.num_classes != num_classes:
        raise ConfigError(
            f"{role} is configured for {spec.num_classes} classes but the task has {num_classes}; "
            f"set {role}.num_classes to {num_classes} or leave it out"
        )
    if spec.in_channels not in (1, 3):
        raise ConfigError(f"{role}: in_channels must be 1 (grayscale) or 3 (RGB), got {spec.in_channels!r}")
    checkpoint = read_checkpoint(spec.checkpoint) if spec.checkpoint else None
    arch, encoder_name, kwargs = spec.arch, spec.encoder_name, dict(spec.kwargs)
    if arch is None or encoder_name is None:
        stored = _spec_from_checkpoint(checkpoint, spec, role)
        arch = arch or stored.arch
        encoder_name = encoder_name or stored.encoder_name
        kwargs = kwargs or dict(stored.kwargs)
    _check_arch(arch, role)
    _check_encoder(encoder_name, role)
    model = smp.create_model(
        arch,
        encoder_name=encoder_name,
        encoder_weights=spec.encoder_weights,
        in_channels=spec.in_channels,
        classes=num_classes,
        **kwargs,
    )
    model.feature_info = encoder_feature_info(model, spec.in_channels)
    if checkpoint is not None:
        state = extract_state_dict(checkpoint)
        head = state.get(_HEAD_WEIGHT)
        if isinstance(head, Tensor) and head.shape[0] != num_classes:
            raise CheckpointError(
                f"{role} checkpoint {str(spec.checkpoint)!r} predicts {head.shape[0]} classes but the task has "
                f"{num_classes}; use a {role} trained on the same classes (background included), or set "
                f"model.init_args.num_classes: {head.shape[0]} if the data has that many"
            )
        load_weights(model, state, source=str(spec.checkpoint), role=role)
    return model


@torch.no_grad()
def encoder_feature_info(model: nn.Module, in_channels: int = 3, size: int = 64) -> list[dict[str, Any]]:
    """The encoder stages of an smp model, as timm's ``feature_info.get_dicts()`` describes a timm model's.

    smp encoders return a list of feature maps but declare no module paths. One dry forward of the encoder (eval
    mode, train flags restored) finds, for each returned map, the outermost module whose output it is; maps that are
    the input itself or have no channels (smp's placeholders) are skipped.

    Args:
        model: An smp model (with an ``encoder``).
        in_channels: Input channels of the model.
        size: Height and width of the dry-forward input (a multiple of 32).

    Returns:
        One ``{"module", "num_chs", "reduction"}`` dict per stage, shallow to deep; module paths start with
        ``encoder.``.
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        return []
    producers: dict[int, str] = {}
    keep: list[Tensor] = []  # holds every output, so no id is reused during the forward

    def hook_for(path: str):
        def hook(_module: nn.Module, _inputs: tuple, output: object) -> None:
            if isinstance(output, Tensor):
                keep.append(output)
                producers[id(output)] = path  # an enclosing module runs its hook later and wins

        return hook

    handles = [module.register_forward_hook(hook_for(path)) for path, module in encoder.named_modules() if path]
    modes = {module: module.training for module in encoder.modules()}
    encoder.eval()
    try:
        parameter = next(encoder.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
        inputs = torch.zeros(1, in_channels, size, size, device=device, dtype=dtype)
        features = encoder(inputs)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    stages = []
    for feature in features if isinstance(features, list | tuple) else []:
        if not isinstance(feature, Tensor) or feature.ndim != 4 or feature is inputs or feature.shape[1] == 0:
            continue
        path = producers.get(id(feature))
        if path is None:
            continue
        stages.append(
            {"module": f"encoder.{path}", "num_chs": int(feature.shape[1]), "reduction": size // feature.shape[-1]}
        )
    return stages


def _check_arch(arch: str, role: str) -> None:
    if arch.lower() not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ConfigError(
            f"{role}: unknown smp architecture {arch!r}; valid ones: {', '.join(segmenter_architectures())}"
        )


def _check_encoder(name: str, role: str) -> None:
    if name.startswith("tu-"):
        if not timm.is_model(name[3:]):
            close = timm.list_models(f"*{name[3:].split('_')[0]}*")[:10]
            raise ConfigError(
                f"{role}: unknown timm encoder {name!r} (no timm model {name[3:]!r}); similar timm names, to use "
                f"with the 'tu-' prefix: {close or 'none'}"
            )
        return
    names = smp.encoders.get_encoder_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=8, cutoff=0.4)
        raise ConfigError(
            f"{role}: unknown smp encoder {name!r}; close smp encoders: {close or 'none'}. Any timm model works as "
            "an encoder with the 'tu-' prefix (e.g. 'tu-test_resnet')"
        )


def _spec_from_checkpoint(checkpoint: Mapping[str, Any] | None, spec: SegmenterSpec, role: str) -> SegmenterSpec:
    hparams = (checkpoint or {}).get("hyper_parameters") or {}
    stored = hparams.get("student")
    if isinstance(stored, Mapping) and stored.get("arch") and stored.get("encoder_name"):
        return SegmenterSpec.coerce(stored, role=role)
    where = f" and checkpoint {Path(spec.checkpoint).name!r} does not record them" if spec.checkpoint else ""
    raise CheckpointError(
        f"{role}: no arch/encoder_name given{where}; set {role}.arch (e.g. Unet) and {role}.encoder_name "
        "(e.g. resnet18)"
    )
