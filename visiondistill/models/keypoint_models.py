"""Top-down keypoint models in the SimpleBaseline style: a timm backbone and a deconvolution head.

Xiao, Wu and Wei, "Simple Baselines for Human Pose Estimation and Tracking" (ECCV 2018): the deepest feature map of
a backbone goes through a few ``ConvTranspose2d(k=4, s=2) → BatchNorm → ReLU`` layers and a final ``1×1``
convolution that predicts one heatmap per keypoint. Every model built here carries a ``feature_info`` list (module
path, channels and reduction of each backbone stage, paths starting with ``backbone.``), so distillation and
explanation callbacks address its backbone stages by index (``-1`` = the deepest stage) as they do for timm
classifiers; the head is reachable by its module path ``head`` (the last deconvolution block's output, at heatmap
resolution) or ``final`` (the heatmaps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch  # noqa: F401 - the examples use it
from torch import Tensor, nn
from typing_extensions import override

from visiondistill.core.config import spec_from
from visiondistill.core.errors import ConfigError
from visiondistill.models.checkpoints import (
    CheckpointError,
    extract_state_dict,
    load_weights,
    read_checkpoint,
)
from visiondistill.models.sources import timm_pretrained

__all__ = ["KeypointModelSpec", "SimpleBaseline", "create_keypoint_model"]


@dataclass
class KeypointModelSpec:
    """What keypoint network to build and where its weights come from.

    Attributes:
        backbone: A timm model name (``resnet18``, ``test_resnet`` …), built with ``features_only=True``. For a
            teacher it may be left out when ``checkpoint`` is one of our own runs: it is then read from the
            checkpoint, with the head's settings.
        deconv_channels: Output channels of each deconvolution layer; each doubles the resolution. ``[]`` puts the
            ``1×1`` heatmap convolution straight on the backbone's last stage.
        stage: The backbone stage the head reads (an index into its feature stages, ``-1`` = the deepest); later
            stages are not built. On small crops an earlier stage keeps more spatial detail (at 64 px the deepest
            stage of a resnet is 2×2, the one before 4×4).
        num_keypoints: Heatmaps predicted; ``None`` takes the task's ``num_keypoints``.
        in_channels: Input channels (1 for grayscale, 3 for RGB).
        pretrained: Load timm's pretrained backbone weights (must be in the local cache: nothing is downloaded).
        checkpoint: A local checkpoint: a ``.ckpt`` of a visiondistill keypoint run (its ``student`` weights) or a
            plain state dict (``.pt``/``.pth``/``.safetensors``).
        kwargs: Extra keyword arguments of ``timm.create_model`` (``drop_path_rate`` …).
    """

    backbone: str | None = None
    deconv_channels: list[int] = field(default_factory=lambda: [128, 128, 128])
    stage: int = -1
    num_keypoints: int | None = None
    in_channels: int = 3
    pretrained: bool = False
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, value: KeypointModelSpec | Mapping[str, Any] | str, role: str = "model") -> KeypointModelSpec:
        """Accepts a spec, a mapping (as stored in checkpoints) or a bare backbone name.

        Raises:
            TypeError: On unknown keys (naming them and the valid ones) or another type.
        """
        if isinstance(value, str):
            return cls(backbone=value)
        return spec_from(cls, value, role, expected="a mapping with a backbone name, or a backbone name")


class SimpleBaseline(nn.Module):
    """A timm ``features_only`` backbone, a deconvolution head and a ``1×1`` heatmap convolution.

    Args:
        backbone: timm model name.
        num_keypoints: Heatmaps predicted.
        deconv_channels: Output channels of each ``ConvTranspose2d(k=4, s=2, p=1)`` layer.
        in_channels: Input channels.
        pretrained: Load timm's (locally cached) pretrained weights.
        stage: The backbone stage the head reads (``-1`` = the deepest); later stages are not built.
        **kwargs: Passed to ``timm.create_model``.

    Attributes:
        feature_info: The backbone's stages as ``{"module", "num_chs", "reduction"}`` dicts, paths prefixed
            ``backbone.``.
        stride: Input pixels per heatmap pixel.

    Example::

        >>> model = SimpleBaseline("test_resnet", num_keypoints=4, deconv_channels=[16, 16, 16])
        >>> model(torch.zeros(2, 3, 64, 64)).shape, model.stride
        (torch.Size([2, 4, 16, 16]), 4)
    """

    def __init__(
        self,
        backbone: str,
        num_keypoints: int,
        deconv_channels: Sequence[int] = (128, 128, 128),
        in_channels: int = 3,
        pretrained: bool = False,
        stage: int = -1,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        # Pretrained weights come from the local cache only (timm would download missing ones).
        create = dict(**timm_pretrained(backbone, pretrained), features_only=True, in_chans=in_channels, **kwargs)
        self.backbone = timm.create_model(backbone, **create)
        count = len(self.backbone.feature_info)
        if not -count <= stage < count:
            raise ConfigError(f"stage {stage} does not exist: {backbone} has {count} stages ({-count}..{count - 1})")
        if stage % count != count - 1:  # build the backbone only up to that stage
            self.backbone = timm.create_model(backbone, out_indices=tuple(range(stage % count + 1)), **create)
        info = self.backbone.feature_info
        self.feature_info = [
            {"module": f"backbone.{d['module']}", "num_chs": d["num_chs"], "reduction": d["reduction"]}
            for d in info.get_dicts()
        ]
        channels = info.channels()[-1]
        layers: list[nn.Module] = []
        for out_channels in deconv_channels:
            deconv = nn.ConvTranspose2d(channels, out_channels, kernel_size=4, stride=2, padding=1, bias=False)
            nn.init.normal_(deconv.weight, std=0.001)
            layers += [deconv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
            channels = out_channels
        self.head = nn.Sequential(*layers)
        self.final = nn.Conv2d(channels, num_keypoints, kernel_size=1)
        nn.init.normal_(self.final.weight, std=0.001)
        nn.init.zeros_(self.final.bias)
        self.num_keypoints = num_keypoints
        self.stride = info.reduction()[-1] // 2 ** len(deconv_channels)

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.final(self.head(self.backbone(x)[-1]))


def create_keypoint_model(spec: KeypointModelSpec, num_keypoints: int, role: str = "model") -> SimpleBaseline:
    """Builds a `SimpleBaseline` from a spec and loads its checkpoint, if any.

    Args:
        spec: The spec; its ``num_keypoints`` (when set) must equal ``num_keypoints``.
        num_keypoints: The task's number of keypoints.
        role: ``"teacher"``/``"student"`` for messages.

    Returns:
        The model; its output is the heatmaps ``N×K×(H/stride)×(W/stride)``.

    Raises:
        ValueError: When the keypoint counts disagree, the backbone or its stage is unknown, or a deconvolution width
            is not positive.
        CheckpointError: When the checkpoint is missing, unreadable, for another number of keypoints or otherwise
            does not fit.

    Example::

        >>> model = create_keypoint_model(KeypointModelSpec("test_resnet", deconv_channels=[8, 8]), num_keypoints=3)
        >>> model(torch.zeros(1, 3, 64, 64)).shape, model.feature_info[-1]["module"]
        (torch.Size([1, 3, 8, 8]), 'backbone.layer4')
    """
    if spec.num_keypoints is not None and spec.num_keypoints != num_keypoints:
        raise ConfigError(
            f"{role} is configured for {spec.num_keypoints} keypoints but the task has {num_keypoints}; "
            f"set {role}.num_keypoints to {num_keypoints} or leave it out"
        )
    checkpoint = read_checkpoint(spec.checkpoint) if spec.checkpoint else None
    backbone, deconv, stage, kwargs = spec.backbone, list(spec.deconv_channels), spec.stage, dict(spec.kwargs)
    if backbone is None:  # everything but the checkpoint and the channels comes from the run that wrote it
        stored = _spec_from_checkpoint(checkpoint, spec, role)
        backbone, deconv, stage = stored.backbone, list(stored.deconv_channels), stored.stage
        kwargs = kwargs or dict(stored.kwargs)
    if not timm.is_model(backbone):
        close = timm.list_models(f"*{backbone.split('_')[0]}*")[:10]
        raise ConfigError(f"{role}: unknown timm backbone {backbone!r}; similar names: {close or 'none'}")
    if any(int(c) <= 0 for c in deconv):
        raise ConfigError(f"{role}: deconv_channels must be positive, got {deconv}")
    model = SimpleBaseline(backbone, num_keypoints, deconv, spec.in_channels, spec.pretrained, stage=stage, **kwargs)
    if checkpoint is not None:
        state = extract_state_dict(checkpoint)
        final = state.get("final.weight")
        if isinstance(final, Tensor) and final.shape[0] != num_keypoints:
            raise CheckpointError(
                f"{role} checkpoint {str(spec.checkpoint)!r} predicts {final.shape[0]} keypoints but the task has "
                f"{num_keypoints}; use a {role} trained on the same keypoints"
            )
        load_weights(model, state, source=str(spec.checkpoint), role=role)
    return model


def _spec_from_checkpoint(
    checkpoint: Mapping[str, Any] | None, spec: KeypointModelSpec, role: str
) -> KeypointModelSpec:
    hparams = (checkpoint or {}).get("hyper_parameters") or {}
    stored = hparams.get("student")
    if isinstance(stored, Mapping) and stored.get("backbone"):
        return KeypointModelSpec.coerce(stored, role=role)
    where = f" and checkpoint {Path(spec.checkpoint).name!r} does not record one" if spec.checkpoint else ""
    raise CheckpointError(f"{role}: no backbone given{where}; set {role}.backbone (a timm model name)")
