"""Cascading randomisation: a weight-blind "explanation" is flagged, Grad-CAM passes, the trained network is kept."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from visiondistill.core.errors import ConfigError
from visiondistill.core.saliency import ClassificationSaliencyAdapter
from visiondistill.explain.attribution import network_maps
from visiondistill.explain.sanity import cascading_randomisation, map_similarity, randomisation_units, randomise_

SIZE = 32


def conv_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


IMAGES = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
TARGETS = [ClassifierOutputTarget(i % 3) for i in range(4)]


def edge_map(network: nn.Module) -> torch.Tensor:
    """An "explanation" that ignores the network: the gradient magnitude of the image."""
    gray = IMAGES.mean(1, keepdim=True)
    kernel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    edges = (F.conv2d(gray, kernel, padding=1) ** 2 + F.conv2d(gray, kernel.transpose(-1, -2), padding=1) ** 2)[:, 0]
    return edges / edges.flatten(1).max(1).values.view(-1, 1, 1)


def test_units_are_the_parameterised_blocks_in_forward_order() -> None:
    # A Sequential child gives its parameterised children; the ReLU, pool and flatten hold nothing.
    assert randomisation_units(conv_net()) == ["0", "2.0", "2.1", "3", "7"]


def test_an_edge_detector_is_flagged_and_gradcam_passes() -> None:
    network = conv_net()
    edges = cascading_randomisation(network, edge_map)
    assert edges.flagged and edges.final_spearman == pytest.approx(1.0)
    assert [unit for unit, _, _ in edges.curve()] == ["7", "3", "2.1", "2.0", "0"]  # top first

    adapter = ClassificationSaliencyAdapter()
    cam = cascading_randomisation(network, lambda net: network_maps(adapter, net, "gradcam", IMAGES, TARGETS, ["3"]))
    assert not cam.flagged and cam.spearman.shape == cam.ssim.shape == (5, 4)
    assert cam.final_spearman < 0.5


def test_the_trained_network_is_left_unchanged_and_the_cascade_is_seeded() -> None:
    network = conv_net()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    explain = lambda net: network_maps(ClassificationSaliencyAdapter(), net, "gradcam", IMAGES, TARGETS, ["3"])  # noqa: E731
    first, second = cascading_randomisation(network, explain), cascading_randomisation(network, explain)
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    torch.testing.assert_close(first.spearman, second.spearman)


def test_randomise_redraws_every_parameter() -> None:
    layer = nn.Linear(4, 4)
    extra = nn.Module()
    extra.scale = nn.Parameter(torch.ones(3) * 0.5 + torch.arange(3.0))
    block = nn.ModuleDict({"layer": layer, "extra": extra})
    old = [p.clone() for p in block.parameters()]
    randomise_(block, seed=3)
    assert all(not torch.equal(o, p) for o, p in zip(old, block.parameters(), strict=True))


def test_similarity_of_identical_and_constant_maps() -> None:
    maps = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0))
    same = map_similarity(maps, maps)
    torch.testing.assert_close(same["spearman"], torch.ones(2))
    torch.testing.assert_close(same["ssim"], torch.ones(2), atol=1e-4, rtol=0)
    assert map_similarity(maps, torch.zeros_like(maps))["spearman"].tolist() == [0.0, 0.0]


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="no parameterised block"):
        cascading_randomisation(nn.ReLU(), edge_map)
    with pytest.raises(ConfigError, match="'head'"):
        cascading_randomisation(conv_net(), edge_map, units=["head"])
    with pytest.raises(ConfigError, match="threshold"):
        cascading_randomisation(conv_net(), edge_map, threshold=2)


def test_constant_trained_maps_make_the_check_not_applicable() -> None:
    result = cascading_randomisation(conv_net(), lambda net: torch.zeros(4, SIZE, SIZE))
    assert not result.applicable and result.constant.tolist() == [True] * 4
    edges = cascading_randomisation(conv_net(), edge_map)
    assert edges.applicable and not edges.constant.any()
