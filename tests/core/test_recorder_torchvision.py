"""Stage indices for models that declare no feature stages (torchvision, your own nn.Module): found by probing."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from visiondistill.core.recorder import (
    FeatureRecorder,
    LayerNotFoundError,
    feature_stages,
    probe_stages,
    resolve_layer,
)


def _summary(model: nn.Module) -> list[tuple[str, int, int]]:
    return [(s.module, s.channels, s.reduction) for s in feature_stages(model)]


def test_torchvision_resnet18_stages_match_timms_feature_info():
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    assert _summary(model) == [
        ("relu", 64, 2),
        ("layer1", 64, 4),
        ("layer2", 128, 8),
        ("layer3", 256, 16),
        ("layer4", 512, 32),
    ]


def test_torchvision_mobilenet_v3_small_stages_skip_squeeze_excitation_and_block_internals():
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=4)
    assert _summary(model) == [
        ("features.0", 16, 2),
        ("features.1", 16, 4),  # not features.2.block.0, the next block's expansion conv still at /4
        ("features.3", 24, 8),
        ("features.8", 48, 16),
        ("features", 576, 32),
    ]


class SharedActivationNet(nn.Module):
    """A hand-written network: a flat forward, one activation module reused at every size, a side branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(32, 32, 1), nn.Sigmoid())
        self.act = nn.ReLU()
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.act(self.conv3(x))
        x = x * self.gate(x)
        return self.fc(x.mean((2, 3)))


def test_custom_module_stages_avoid_the_shared_activation_and_the_gate():
    model = SharedActivationNet()
    # `act` runs at three sizes, so its recorded output would be ambiguous: each stage is the convolution instead.
    assert _summary(model) == [("conv1", 8, 1), ("conv2", 16, 2), ("conv3", 32, 4)]
    recorder = FeatureRecorder(model, [-1, -2])
    model(torch.zeros(2, 3, 32, 32))
    assert recorder[-1].shape == (2, 32, 8, 8) and recorder[-2].shape == (2, 16, 16, 16)
    recorder.remove()


def test_probe_restores_train_flags_and_runs_once_per_model():
    model = torchvision.models.resnet18(weights=None, num_classes=4).train()
    calls = []
    model.conv1.register_forward_hook(lambda *_: calls.append(1))
    first = feature_stages(model)
    assert all(module.training for module in model.modules())
    assert feature_stages(model) == first and resolve_layer(model, -1)[0] == "layer4"
    assert len(calls) == 1


def test_model_without_spatial_maps_says_why_stage_indices_fail():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    assert probe_stages(model) == ([], "it has no Conv2d layer, so no spatial feature maps to find")
    with pytest.raises(LayerNotFoundError, match="probing found none: it has no Conv2d layer.*by module path"):
        resolve_layer(model, -1, role="teacher")


def test_declared_stages_win_over_probing():
    model = SharedActivationNet()
    model.feature_info = [{"module": "conv2", "num_chs": 16, "reduction": 2}]
    assert _summary(model) == [("conv2", 16, 2)]
