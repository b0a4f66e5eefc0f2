"""FCOS detectors on timm backbones: outputs, losses, feature stages, checkpoints and clear errors."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torchvision.models.detection import FCOS

from visiondistill.distill import resolve_layer
from visiondistill.models import CheckpointError
from visiondistill.models.detectors import DetectorSpec, create_detector
from visiondistill.reporting.loader import load_task_module

from ..support.detection import TINY_STUDENT

TARGETS = [
    {"boxes": torch.tensor([[8.0, 8.0, 30.0, 30.0], [30.0, 34.0, 60.0, 50.0]]), "labels": torch.tensor([0, 1])},
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},  # an image without objects
]


def test_output_levels_locations_and_feature_stages():
    detector = create_detector(TINY_STUDENT, num_classes=2)
    out = detector(torch.randn(2, 3, 64, 48))
    assert out.level_shapes() == [(16, 12), (8, 6), (4, 3)] and detector.strides == [4, 8, 16]
    locations = 16 * 12 + 8 * 6 + 4 * 3
    assert out.cls_logits.shape == (2, locations, 2) and out.bbox_regression.shape == (2, locations, 4)
    assert out.anchors.shape == (locations, 4) and out.num_anchors_per_level == [192, 48, 12]
    # points sit at multiples of the stride (torchvision's AnchorGenerator), as stride-sized boxes
    assert out.anchors[0].tolist() == [-2.0, -2.0, 2.0, 2.0] and out.anchors[192].tolist() == [-4.0, -4.0, 4.0, 4.0]
    path, module = resolve_layer(detector, -1)
    assert path == "fpn.layer_blocks.2" and module is detector.fpn.layer_blocks[2]
    assert resolve_layer(detector, 0)[0] == "backbone.layer1"  # the stages of out_indices, then the FPN levels


def test_loss_terms_matching_and_training():
    torch.manual_seed(0)
    detector = create_detector(TINY_STUDENT, num_classes=2)
    images = torch.randn(2, 3, 64, 64)
    out = detector(images)
    losses = detector.compute_loss(out, TARGETS)
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    assert all(torch.isfinite(v) for v in losses.values())
    matched = detector.match(out, TARGETS)
    assert (matched[0] >= 0).sum() > 0 and (matched[1] == -1).all()
    # the matched locations are those inside a box and near its centre
    centres = (out.anchors[:, :2] + out.anchors[:, 2:]) / 2
    for location in torch.nonzero(matched[0] >= 0).flatten().tolist():
        box = TARGETS[0]["boxes"][matched[0][location]]
        x, y = centres[location].tolist()
        assert box[0] < x < box[2] and box[1] < y < box[3]
    optimizer = torch.optim.AdamW(detector.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        total = sum(detector.compute_loss(detector(images), TARGETS).values())
        first = first if first is not None else float(total.detach())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert float(total.detach()) < 0.7 * first


class _BackboneWithFPN(torch.nn.Module):
    """Our backbone + FPN as torchvision's FCOS expects a backbone (an OrderedDict of maps, ``out_channels``)."""

    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector, self.out_channels = detector, detector.fpn.layer_blocks[0].out_channels

    def forward(self, images: torch.Tensor) -> OrderedDict:
        stages = self.detector.backbone(images)
        return self.detector.fpn(OrderedDict((str(i), f) for i, f in enumerate(stages)))


def test_loss_and_detections_equal_torchvision_fcos():
    torch.manual_seed(0)
    detector = create_detector(TINY_STUDENT, num_classes=2).eval()
    reference = FCOS(
        _BackboneWithFPN(detector),
        num_classes=2,
        min_size=64,
        max_size=64,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        anchor_generator=detector.anchor_generator,
        head=detector.head,
        score_thresh=detector.score_thresh,
        nms_thresh=detector.nms_thresh,
        detections_per_img=detector.detections_per_img,
        topk_candidates=detector.topk_candidates,
        center_sampling_radius=detector.center_sampling_radius,
    )
    images = torch.randn(2, 3, 64, 64)
    ours = detector.compute_loss(detector(images), TARGETS)
    theirs = FCOS.compute_loss(reference, TARGETS, *_head_and_anchors(reference, images), [16 * 16, 8 * 8, 4 * 4])
    for key in ours:
        assert float(ours[key].detach()) == pytest.approx(float(theirs[key].detach()), rel=1e-5)
    reference.eval()
    with torch.no_grad():
        expected = reference(list(images))
        got = detector.postprocess(detector(images))
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g["boxes"], e["boxes"])
        torch.testing.assert_close(g["scores"], e["scores"])


def _head_and_anchors(reference: FCOS, images: torch.Tensor) -> tuple[dict, list]:
    from torchvision.models.detection.image_list import ImageList

    features = list(reference.backbone(images).values())
    anchors = reference.anchor_generator(ImageList(images, [(64, 64)] * len(images)), features)
    return reference.head(features), anchors


def test_postprocess_gives_boxes_inside_the_image():
    detector = create_detector(DetectorSpec(backbone="test_resnet", fpn_channels=16, score_thresh=0.0), 3).eval()
    detections = detector.postprocess(detector(torch.randn(2, 3, 64, 64)))
    assert len(detections) == 2
    for d in detections:
        assert d["boxes"].shape[1] == 4 and len(d["boxes"]) == len(d["scores"]) == len(d["labels"]) <= 50
        assert ((d["boxes"] >= 0) & (d["boxes"] <= 64)).all() and (d["labels"] < 3).all()


def test_narrow_fpn_uses_fewer_norm_groups():
    detector = create_detector(DetectorSpec(backbone="test_resnet", fpn_channels=24, head_convs=1), 2)
    assert detector.head.classification_head.conv[1].num_groups == 8


def test_bad_specs_fail_with_clear_messages():
    with pytest.raises(ValueError, match="unknown timm backbone 'resnett18'"):
        create_detector(DetectorSpec(backbone="resnett18"), 2)
    with pytest.raises(ValueError, match="configured for 3 classes but the task has 2"):
        create_detector(DetectorSpec(backbone="test_resnet", num_classes=3), 2)
    with pytest.raises(ValueError, match="cannot give out_indices"):
        create_detector(DetectorSpec(backbone="test_resnet", out_indices=[1, 9]), 2)
    with pytest.raises(TypeError, match="fpn_width"):
        DetectorSpec.coerce({"backbone": "test_resnet", "fpn_width": 8})


def test_checkpoint_round_trip_and_class_mismatch(tmp_path: Path):
    from visiondistill.tasks import DetectionTask

    task = DetectionTask(student=TINY_STUDENT, num_classes=2)
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    module = load_task_module(path)  # no _class_path: a checkpoint saved by hand, recognised by its student spec
    model, hparams = module.student, module.hparams
    images = torch.randn(1, 3, 64, 64)
    assert torch.equal(model(images).cls_logits, task.student.eval()(images).cls_logits)
    assert hparams["num_classes"] == 2
    # a teacher built from the checkpoint alone (backbone read from it)
    teacher = create_detector(DetectorSpec(checkpoint=str(path)), 2, role="teacher")
    assert torch.equal(teacher.eval()(images).cls_logits, model(images).cls_logits)
    with pytest.raises(CheckpointError, match="predicts 2 classes but the task has 5"):
        create_detector(DetectorSpec(checkpoint=str(path)), 5, role="teacher")
    with pytest.raises(CheckpointError, match="does not exist"):
        create_detector(DetectorSpec(backbone="test_resnet", checkpoint=str(tmp_path / "none.ckpt")), 2)
