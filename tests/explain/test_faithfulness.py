"""Faithfulness measures: deletion / insertion against a hand computation, ROAD and average drop on tiny models."""

from __future__ import annotations

import math
import time

import pytest
import timm
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget
from torch import nn

from visiondistill.core.adapters import KeypointPeakTarget
from visiondistill.core.errors import ConfigError
from visiondistill.explain.faithfulness import (
    FAITHFULNESS_KEYS,
    area_under_curve,
    confidence_change,
    faithfulness_scores,
    perturbation_curves,
    probability_targets,
    road_scores,
)


class TopRowMean(nn.Module):
    """Output ``(N, 1)``: the mean of the top row of channel 0 — the known region the score depends on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :].mean(dim=-1, keepdim=True)


def score(output: torch.Tensor) -> torch.Tensor:
    return output[0]


IMAGE = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
EXACT = torch.tensor([[1.0, 0.9], [0.0, 0.1]]).view(1, 2, 2)  # the top row first
REVERSED = 1 - EXACT


def test_deletion_and_insertion_match_the_hand_computation() -> None:
    model = TopRowMean()
    # One pixel per step, zero baseline. Exact order (0,0),(0,1),(1,1),(1,0): 1.5, 1, 0, 0, 0.
    deletion = perturbation_curves(model, IMAGE, EXACT, [score], "deletion", steps=4, baseline="zero")
    torch.testing.assert_close(deletion[0], torch.tensor([1.5, 1.0, 0.0, 0.0, 0.0]))
    assert float(area_under_curve(deletion)) == pytest.approx((2.5 - 0.75) / 4)
    # Reversed order (1,0),(1,1),(0,1),(0,0): 1.5, 1.5, 1.5, 0.5, 0.
    deletion = perturbation_curves(model, IMAGE, REVERSED, [score], "deletion", steps=4, baseline="zero")
    torch.testing.assert_close(deletion[0], torch.tensor([1.5, 1.5, 1.5, 0.5, 0.0]))
    assert float(area_under_curve(deletion)) == pytest.approx((5.0 - 0.75) / 4)
    insertion = perturbation_curves(model, IMAGE, EXACT, [score], "insertion", steps=4, baseline="zero")
    torch.testing.assert_close(insertion[0], torch.tensor([0.0, 0.5, 1.5, 1.5, 1.5]))
    # Two steps of ceil(4 / 2) = 2 pixels: the exact map deletes the whole top row at once.
    halves = perturbation_curves(model, IMAGE, EXACT, [score], "deletion", steps=2, baseline="zero")
    torch.testing.assert_close(halves[0], torch.tensor([1.5, 0.0, 0.0]))
    # Three steps of ceil(4 / 3) = 2 pixels: the last step has nothing left to move.
    thirds = perturbation_curves(model, IMAGE, REVERSED, [score], "deletion", steps=3, baseline="zero")
    torch.testing.assert_close(thirds[0], torch.tensor([1.5, 1.5, 0.0, 0.0]))


def test_blur_baseline_and_upsampled_maps() -> None:
    model = TopRowMean()
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    coarse = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 2, 2)  # top half: bilinearly upsampled to 16×16
    insertion = perturbation_curves(model, image, coarse, [score], "insertion", steps=8)
    with torch.no_grad():
        assert float(insertion[0, -1]) == pytest.approx(float(model(image)[0, 0]), abs=1e-6)
        # The first half of the steps inserts the top half, which holds the top row: the score is reached at 4/8.
        assert float(insertion[0, 4]) == pytest.approx(float(model(image)[0, 0]), abs=1e-6)


def small_classifier() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=3, pretrained=False).eval()


def test_every_measure_per_image_and_exact_beats_reversed_on_road() -> None:
    model = TopRowMean()
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) + 1
    exact = torch.zeros(2, 16, 16)
    exact[:, 0, :] = 1.0
    # A zero insertion baseline: the blurred image's top row has about the same mean as the sharp one.
    options = {"steps": 8, "insertion_baseline": "zero"}
    scores = faithfulness_scores(model, image, exact, [score, score], **options)
    assert tuple(scores) == FAITHFULNESS_KEYS and all(v.shape == (2,) for v in scores.values())
    reversed_scores = faithfulness_scores(model, image, 1 - exact, [score, score], **options)
    assert (scores["deletion_auc"] < reversed_scores["deletion_auc"]).all()
    assert (scores["insertion_auc"] > reversed_scores["insertion_auc"]).all()
    # Imputing the top row (MoRF at 90 %) changes the score; imputing the rest leaves it as it was.
    assert (scores["road_combined"] > reversed_scores["road_combined"]).all()
    assert scores["road_lerf"].abs().max() < 1e-6 and (reversed_scores["road_morf"].abs() < 1e-6).all()
    # x · m keeps the top row as it is: no drop; the reversed map zeroes it: the whole score is lost.
    torch.testing.assert_close(scores["average_drop"], torch.zeros(2))
    torch.testing.assert_close(reversed_scores["average_drop"], torch.ones(2))


def test_road_and_confidence_on_a_classifier() -> None:
    model = small_classifier()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    maps = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(3))
    targets = probability_targets([ClassifierOutputTarget(0), ClassifierOutputTarget(2)])
    assert all(isinstance(t, ClassifierOutputSoftmaxTarget) for t in targets)
    first, second = road_scores(model, images, maps, targets, seed=5), road_scores(model, images, maps, targets, seed=5)
    torch.testing.assert_close(first["road_morf"], second["road_morf"])  # the imputation noise is seeded
    confidence = confidence_change(model, images, maps, targets)
    assert ((confidence["average_drop"] >= 0) & (confidence["average_drop"] <= 1)).all()
    keypoint = KeypointPeakTarget(0)
    assert probability_targets([keypoint]) == [keypoint]


def test_average_drop_is_nan_for_a_non_positive_score() -> None:
    model = TopRowMean()
    image = -torch.ones(1, 1, 2, 2)
    assert math.isnan(float(confidence_change(model, image, EXACT, [score])["average_drop"][0]))


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="mode"):
        perturbation_curves(TopRowMean(), IMAGE, EXACT, [score], "erase")
    with pytest.raises(ConfigError, match="steps"):
        perturbation_curves(TopRowMean(), IMAGE, EXACT, [score], steps=0)
    with pytest.raises(ConfigError, match="maps must be"):
        perturbation_curves(TopRowMean(), IMAGE, EXACT[0], [score])


@pytest.mark.slow
@pytest.mark.parametrize("size", [32, 64])
def test_cost_per_image(size: int) -> None:
    """Prints the cost the module docstring states (CPU, one thread)."""
    model = small_classifier()
    images = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(2))
    maps = torch.rand(8, size, size, generator=torch.Generator().manual_seed(3))
    targets = probability_targets([ClassifierOutputTarget(0)] * 8)
    timings = {}
    calls = {
        "deletion+insertion": lambda: [
            perturbation_curves(model, images, maps, targets, m) for m in ("deletion", "insertion")
        ],
        "road": lambda: road_scores(model, images, maps, targets),
        "confidence": lambda: confidence_change(model, images, maps, targets),
    }
    for name, call in calls.items():
        start = time.perf_counter()
        call()
        timings[name] = (time.perf_counter() - start) / 8
    print(size, {k: f"{1000 * v:.1f} ms/image" for k, v in timings.items()})
    assert all(v > 0 for v in timings.values())
