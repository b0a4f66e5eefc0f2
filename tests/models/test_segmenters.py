"""smp segmenters from a spec: encoder stages, errors that name the fix, checkpoints."""

from __future__ import annotations

import pytest
import torch

from visiondistill.core.recorder import FeatureRecorder, feature_stages
from visiondistill.models import CheckpointError, SegmenterSpec, create_segmenter
from visiondistill.reporting.loader import load_task_module

from ..support.segmentation import TINY_STUDENT


@pytest.mark.parametrize(
    ("arch", "encoder", "in_channels"),
    [("Unet", "resnet18", 3), ("FPN", "tu-test_resnet", 1), ("DeepLabV3Plus", "tu-test_resnet", 3)],
)
def test_segmenter_shapes_and_stages(arch: str, encoder: str, in_channels: int):
    model = create_segmenter(SegmenterSpec(arch=arch, encoder_name=encoder, in_channels=in_channels), num_classes=4)
    model.eval()  # DeepLabV3+ pools to 1×1 in its ASPP, which BatchNorm refuses in train mode at batch size 1
    logits = model(torch.zeros(2, in_channels, 32, 32))
    assert logits.shape == (2, 4, 32, 32)
    stages = feature_stages(model)
    assert len(stages) == 5 and all(s.module.startswith("encoder.") for s in stages)
    assert [s.reduction for s in stages][:3] == [2, 4, 8]
    recorder = FeatureRecorder(model, [-1, -2])
    model(torch.zeros(1, in_channels, 64, 64))
    assert recorder[-1].shape[1] == stages[-1].channels and recorder[-2].shape[1] == stages[-2].channels
    recorder.remove()


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown smp architecture 'Unett'.*DeepLabV3Plus.*Unet"):
        create_segmenter(SegmenterSpec(arch="Unett", encoder_name="resnet18"), num_classes=2)


def test_unknown_encoder_suggests_close_names():
    with pytest.raises(ValueError, match=r"resnet19.*resnet18.*tu-"):
        create_segmenter(SegmenterSpec(arch="Unet", encoder_name="resnet19"), num_classes=2)
    with pytest.raises(ValueError, match=r"unknown timm encoder 'tu-no_such_net'"):
        create_segmenter(SegmenterSpec(arch="Unet", encoder_name="tu-no_such_net"), num_classes=2)


def test_spec_class_count_must_match_the_task():
    with pytest.raises(ValueError, match=r"teacher is configured for 3 classes but the task has 4"):
        create_segmenter(SegmenterSpec(arch="Unet", encoder_name="resnet18", num_classes=3), 4, role="teacher")


def test_checkpoint_of_another_class_count_is_named(tmp_path):
    model = create_segmenter(TINY_STUDENT, num_classes=3)
    path = tmp_path / "three.pt"
    torch.save(model.state_dict(), path)
    spec = SegmenterSpec(arch="Unet", encoder_name="tu-test_resnet", kwargs=TINY_STUDENT.kwargs, checkpoint=str(path))
    with pytest.raises(CheckpointError, match=r"predicts 3 classes but the task has 5"):
        create_segmenter(spec, num_classes=5, role="teacher")
    loaded = create_segmenter(spec, num_classes=3, role="teacher")
    assert torch.equal(
        loaded.state_dict()["segmentation_head.0.weight"], model.state_dict()["segmentation_head.0.weight"]
    )


def test_loader_rejects_foreign_checkpoints(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="is not a visiondistill student checkpoint"):
        load_task_module(path)
