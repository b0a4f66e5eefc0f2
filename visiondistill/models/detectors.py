"""FCOS detectors on timm backbones: a timm ``features_only`` backbone, a torchvision FPN and torchvision's FCOS head.

`Detector` reuses torchvision's FCOS pieces unchanged — `FCOSHead` (its focal / GIoU / centre-ness losses), the
`AnchorGenerator` (one point per location and level), FCOS's ground-truth matching (centre sampling and per-level scale
ranges) and its post-processing (score threshold, top-k, class-wise NMS) — but not its ``GeneralizedRCNNTransform``:
the images come already resized and normalised by the datamodule, and ``forward(images)`` works on one fixed-size
batch and returns every intermediate the distillation callbacks need (`DetectorOutput`), so the shared protocol's
``student(inputs)`` works as for any other task. Losses come from `Detector.compute_loss`, boxes from
`Detector.postprocess`.

FCOS rather than RetinaNet: it is anchor-free (one location per point and level), so teacher and student with the
same FPN strides predict at exactly the same locations (logit KD pairs them one to one) and there are no anchor
shapes to tune for small objects.

Every detector built here carries a ``feature_info`` list (module path, channels and reduction): the backbone stages
(``backbone.<stage>``) followed by the FPN levels (``fpn.layer_blocks.<i>``), so callbacks address them by module path
or by stage index (``-1`` = the coarsest FPN level).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection._utils import BoxLinearCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FeaturePyramidNetwork

from visiondistill.core.config import spec_from
from visiondistill.core.errors import ConfigError
from visiondistill.models.checkpoints import (
    CheckpointError,
    extract_state_dict,
    load_weights,
    read_checkpoint,
)

__all__ = ["Detector", "DetectorOutput", "DetectorSpec", "create_detector"]

_HEAD_WEIGHT = "head.classification_head.cls_logits.weight"


@dataclass
class DetectorSpec:
    """What FCOS detector to build and where its weights come from.

    Attributes:
        backbone: timm model name (``resnet18``, ``test_resnet``, ``mobilenetv3_small_050`` …), built with
            ``features_only=True``. For a teacher it may be left out when ``checkpoint`` is one of our own runs.
        out_indices: Backbone stages fed to the FPN (timm ``out_indices``); each becomes one FPN level. Teacher and
            student need the same strides for head-logit distillation.
        fpn_channels: Width of the FPN and of the head.
        head_convs: 3×3 convolutions in each head branch (4 in the paper; 2 is plenty at 64 px).
        in_channels: Input channels: 1 (grayscale) or 3 (RGB).
        num_classes: Object classes (no background class: FCOS scores each class with a sigmoid); ``None`` takes
            the task's ``num_classes``.
        score_thresh: Post-processing: lowest score kept.
        nms_thresh: Post-processing: IoU of class-wise NMS.
        detections_per_img: Post-processing: most detections kept per image.
        topk_candidates: Post-processing: candidates kept per level before NMS.
        center_sampling_radius: FCOS matching: a location is positive only within this many strides of a box centre.
        checkpoint: A ``.ckpt`` of a visiondistill detection run (its ``student`` weights) or a plain state dict.
        kwargs: Extra keyword arguments of ``timm.create_model``.
    """

    backbone: str | None = None
    out_indices: list[int] = field(default_factory=lambda: [1, 2, 3])
    fpn_channels: int = 64
    head_convs: int = 2
    in_channels: int = 3
    num_classes: int | None = None
    score_thresh: float = 0.05
    nms_thresh: float = 0.6
    detections_per_img: int = 50
    topk_candidates: int = 200
    center_sampling_radius: float = 1.5
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, value: DetectorSpec | Mapping[str, Any], role: str = "model") -> DetectorSpec:
        """Accepts a spec or a mapping (as stored in checkpoints).

        Raises:
            TypeError: On unknown keys (naming them and the valid ones) or another type.
        """
        return spec_from(cls, value, role, expected="a mapping with backbone, out_indices and fpn_channels")


#: FCOS box coding: distances to the four sides in units of the location's stride.
_BOX_CODER = BoxLinearCoder(normalize_by_size=True)


@dataclass
class DetectorOutput:
    """Everything one forward pass of a `Detector` produces, for a batch of ``N`` images of one size.

    Attributes:
        features: The FPN levels, fine to coarse, each ``N×fpn_channels×H_l×W_l``.
        cls_logits: Classification logits of every location, ``N×A×K`` (``A`` = Σ H_l·W_l, levels in order,
            row-major within a level): one sigmoid per class.
        bbox_regression: FCOS box regression, ``N×A×4`` (distances to the box sides, in units of the level's stride).
        bbox_ctrness: Centre-ness logits, ``N×A×1``.
        anchors: The location of each of the ``A`` points as FCOS's ``A×4`` stride-sized boxes (same for every
            image of the batch).
        num_anchors_per_level: ``H_l·W_l`` of each level.
        image_size: ``(H, W)`` of the input.
    """

    features: list[Tensor]
    cls_logits: Tensor
    bbox_regression: Tensor
    bbox_ctrness: Tensor
    anchors: Tensor
    num_anchors_per_level: list[int]
    image_size: tuple[int, int]

    def head_outputs(self) -> dict[str, Tensor]:
        """The head outputs as torchvision's FCOS names them."""
        return {
            "cls_logits": self.cls_logits,
            "bbox_regression": self.bbox_regression,
            "bbox_ctrness": self.bbox_ctrness,
        }

    def decoded_boxes(self) -> Tensor:
        """The box each location predicts, ``N×A×4`` xyxy pixels (FCOS's linear box coding; differentiable)."""
        n = self.bbox_regression.shape[0]
        anchors = self.anchors.unsqueeze(0).expand(n, -1, -1)
        return _BOX_CODER.decode(self.bbox_regression, anchors)

    def level_shapes(self) -> list[tuple[int, int]]:
        """``(H_l, W_l)`` of each FPN level."""
        return [tuple(feature.shape[-2:]) for feature in self.features]


class Detector(nn.Module):
    """FCOS on a timm backbone through an FPN (see the module docstring).

    Args:
        backbone: A timm ``features_only`` model.
        num_classes: Object classes.
        fpn_channels: FPN and head width.
        head_convs: Convolutions per head branch.
        score_thresh: Post-processing score threshold.
        nms_thresh: Post-processing NMS IoU.
        detections_per_img: Most detections per image.
        topk_candidates: Candidates per level before NMS.
        center_sampling_radius: FCOS centre-sampling radius, in strides.

    Example::

        >>> backbone = timm.create_model("test_resnet", features_only=True, out_indices=[1, 2, 3])
        >>> detector = Detector(backbone, num_classes=3, fpn_channels=32).eval()
        >>> out = detector(torch.zeros(2, 3, 64, 64))
        >>> out.cls_logits.shape, out.level_shapes()
        (torch.Size([2, 336, 3]), [(16, 16), (8, 8), (4, 4)])
        >>> sorted(detector.postprocess(out)[0])
        ['boxes', 'labels', 'scores']
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        fpn_channels: int = 64,
        head_convs: int = 2,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.6,
        detections_per_img: int = 50,
        topk_candidates: int = 200,
        center_sampling_radius: float = 1.5,
    ) -> None:
        super().__init__()
        info = backbone.feature_info
        self.backbone = backbone
        self.strides = [int(r) for r in info.reduction()]
        self.fpn = FeaturePyramidNetwork(list(info.channels()), fpn_channels)
        # torchvision's head normalises with GroupNorm(32, C); narrower FPNs get as many groups as divide C.
        norm = partial(nn.GroupNorm, math.gcd(32, fpn_channels))
        self.head = FCOSHead(fpn_channels, num_anchors=1, num_classes=num_classes, num_convs=0)
        self.head.classification_head = FCOSClassificationHead(
            fpn_channels, 1, num_classes, head_convs, norm_layer=norm
        )
        self.head.regression_head = FCOSRegressionHead(fpn_channels, 1, head_convs, norm_layer=norm)
        # One point per location: FCOS's "anchors" are stride-sized boxes centred on the points.
        self.anchor_generator = AnchorGenerator(tuple((s,) for s in self.strides), ((1.0,),) * len(self.strides))
        self.box_coder = _BOX_CODER  # FCOS's post-processing reads it
        self.num_classes = num_classes
        self.center_sampling_radius = center_sampling_radius
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img, self.topk_candidates = detections_per_img, topk_candidates
        stages = [{**d, "module": f"backbone.{d['module']}"} for d in info.get_dicts()]
        levels = [
            {"module": f"fpn.layer_blocks.{i}", "num_chs": fpn_channels, "reduction": s}
            for i, s in enumerate(self.strides)
        ]
        self.feature_info = [{k: d[k] for k in ("module", "num_chs", "reduction")} for d in stages + levels]

    def forward(self, images: Tensor) -> DetectorOutput:
        """Runs backbone, FPN and head on a batch ``N×C×H×W``; see `DetectorOutput`."""
        stages = self.backbone(images)
        features = list(self.fpn({str(i): f for i, f in enumerate(stages)}).values())
        head = self.head(features)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        image_list = ImageList(images[:1], [size])
        anchors = self.anchor_generator(image_list, features)[0]
        return DetectorOutput(
            features=features,
            cls_logits=head["cls_logits"],
            bbox_regression=head["bbox_regression"],
            bbox_ctrness=head["bbox_ctrness"],
            anchors=anchors,
            num_anchors_per_level=[f.shape[-2] * f.shape[-1] for f in features],
            image_size=size,
        )

    def match(self, output: DetectorOutput, targets: Sequence[Mapping[str, Tensor]]) -> list[Tensor]:
        """FCOS ground-truth matching: for each image, the index of the box each location learns, ``-1`` if none."""
        matched: list[Tensor] = []

        def capture(_targets: Any, _head_outputs: Any, _anchors: Any, matched_idxs: list[Tensor]) -> dict:
            matched.extend(matched_idxs)
            return {}

        head, self.head = self.head, _Capture(capture)
        try:
            FCOS.compute_loss(
                self, list(targets), output.head_outputs(), self._anchors(output), output.num_anchors_per_level
            )
        finally:
            self.head = head
        return matched

    def compute_loss(self, output: DetectorOutput, targets: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """The FCOS losses of torchvision, each divided by the number of positive locations.

        ``classification`` (sigmoid focal loss), ``bbox_regression`` (GIoU) and ``bbox_ctrness`` (BCE).

        Args:
            output: The forward output on the batch.
            targets: One dict per image with ``boxes`` (``M×4`` float xyxy pixels) and ``labels`` (``M`` int64 in
                ``0 … num_classes − 1``); ``M`` may be 0.

        Returns:
            The three loss terms.
        """
        targets = [{"boxes": t["boxes"].to(output.anchors), "labels": t["labels"].long()} for t in targets]
        return FCOS.compute_loss(
            self, targets, output.head_outputs(), self._anchors(output), output.num_anchors_per_level
        )

    @torch.no_grad()
    def postprocess(self, output: DetectorOutput) -> list[dict[str, Tensor]]:
        """Detections per image (``boxes`` xyxy pixels, ``scores``, ``labels``), via FCOS's post-processing."""
        split = {k: list(v.split(output.num_anchors_per_level, dim=1)) for k, v in output.head_outputs().items()}
        levels = list(output.anchors.split(output.num_anchors_per_level))
        n = output.cls_logits.shape[0]
        return FCOS.postprocess_detections(self, split, [levels] * n, [output.image_size] * n)

    def decode_boxes(self, output: DetectorOutput) -> Tensor:
        """The box each location predicts, ``N×A×4`` xyxy pixels (differentiable)."""
        return output.decoded_boxes()

    @staticmethod
    def _anchors(output: DetectorOutput) -> list[Tensor]:
        return [output.anchors] * output.cls_logits.shape[0]


class _Capture(nn.Module):
    """Stands in for the head while `Detector.match` runs FCOS's matching, to keep the matched indices."""

    def __init__(self, function: Any) -> None:
        super().__init__()
        self.function = function

    def compute_loss(self, *args: Any) -> dict:
        return self.function(*args)


def create_detector(spec: DetectorSpec, num_classes: int, role: str = "model") -> Detector:
    """Builds an FCOS detector from a spec and loads its checkpoint, if any.

    Args:
        spec: The spec; its ``num_classes`` (when set) must equal ``num_classes``.
        num_classes: The task's number of object classes.
        role: ``"teacher"``/``"student"`` for messages.

    Returns:
        The detector.

    Raises:
        ValueError: When the class counts disagree, ``in_channels`` is not 1 or 3, the backbone is unknown (the
            message lists similar names), ``out_indices`` is empty or a setting is out of range.
        CheckpointError: When the checkpoint is missing, unreadable, for another number of classes or otherwise
            does not fit.

    Example::

        >>> detector = create_detector(DetectorSpec(backbone="test_resnet", fpn_channels=32), num_classes=6)
        >>> [stage["module"] for stage in detector.feature_info][-1]
        'fpn.layer_blocks.2'
    """
    if spec.num_classes is not None and spec.num_classes != num_classes:
        raise ConfigError(
            f"{role} is configured for {spec.num_classes} classes but the task has {num_classes}; "
            f"set {role}.num_classes to {num_classes} or leave it out"
        )
    if spec.in_channels not in (1, 3):
        raise ConfigError(f"{role}: in_channels must be 1 (grayscale) or 3 (RGB), got {spec.in_channels!r}")
    if spec.fpn_channels < 1 or spec.head_convs < 0 or not spec.out_indices:
        raise ConfigError(
            f"{role}: need fpn_channels >= 1, head_convs >= 0 and at least one out_indices, got "
            f"fpn_channels={spec.fpn_channels}, head_convs={spec.head_convs}, out_indices={spec.out_indices}"
        )
    checkpoint = read_checkpoint(spec.checkpoint) if spec.checkpoint else None
    backbone_name, out_indices, channels = spec.backbone, list(spec.out_indices), spec.fpn_channels
    head_convs, kwargs = spec.head_convs, dict(spec.kwargs)
    if backbone_name is None:
        stored = _spec_from_checkpoint(checkpoint, spec, role)
        backbone_name, out_indices, channels = stored.backbone, list(stored.out_indices), stored.fpn_channels
        head_convs, kwargs = stored.head_convs, kwargs or dict(stored.kwargs)
    if not timm.is_model(backbone_name):
        close = timm.list_models(f"*{backbone_name.split('_')[0]}*")[:10]
        raise ConfigError(f"{role}: unknown timm backbone {backbone_name!r}; similar timm names: {close or 'none'}")
    try:
        backbone = timm.create_model(
            backbone_name,
            pretrained=False,
            features_only=True,
            out_indices=out_indices,
            in_chans=spec.in_channels,
            **kwargs,
        )
    except (IndexError, AssertionError, ValueError) as error:
        raise ConfigError(
            f"{role}: backbone {backbone_name!r} cannot give out_indices {out_indices}: {error}"
        ) from None
    model = Detector(
        backbone,
        num_classes,
        fpn_channels=channels,
        head_convs=head_convs,
        score_thresh=spec.score_thresh,
        nms_thresh=spec.nms_thresh,
        detections_per_img=spec.detections_per_img,
        topk_candidates=spec.topk_candidates,
        center_sampling_radius=spec.center_sampling_radius,
    )
    if checkpoint is not None:
        state = extract_state_dict(checkpoint)
        head = state.get(_HEAD_WEIGHT)
        if isinstance(head, Tensor) and head.shape[0] != num_classes:
            raise CheckpointError(
                f"{role} checkpoint {str(spec.checkpoint)!r} predicts {head.shape[0]} classes but the task has "
                f"{num_classes}; use a {role} trained on the same classes, or set model.init_args.num_classes: "
                f"{head.shape[0]} if the data has that many"
            )
        load_weights(model, state, source=str(spec.checkpoint), role=role)
    return model


def _spec_from_checkpoint(checkpoint: Mapping[str, Any] | None, spec: DetectorSpec, role: str) -> DetectorSpec:
    hparams = (checkpoint or {}).get("hyper_parameters") or {}
    stored = hparams.get("student")
    if isinstance(stored, Mapping) and stored.get("backbone"):
        return DetectorSpec.coerce(stored, role=role)
    where = f" and checkpoint {Path(spec.checkpoint).name!r} does not record it" if spec.checkpoint else ""
    raise CheckpointError(f"{role}: no backbone given{where}; set {role}.backbone (e.g. resnet18)")
