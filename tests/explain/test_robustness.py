"""Robustness of explanations: PGD against a hand computation on a linear model, max-sensitivity's scaling."""

from __future__ import annotations

import pytest
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from visiondistill.core.errors import ConfigError
from visiondistill.core.saliency import ClassificationSaliencyAdapter
from visiondistill.explain.attribution import network_maps, target_scores
from visiondistill.explain.robustness import max_sensitivity, pgd_attack, pgd_explanation_shift

SIZE = 16
IMAGES = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
TARGETS = [ClassifierOutputTarget(1), ClassifierOutputTarget(0)]


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 2)).eval()


def conv_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    ).eval()  # fmt: skip


def test_pgd_on_a_linear_score_moves_every_pixel_by_epsilon_against_its_weight() -> None:
    model = linear_model()
    adversarial = pgd_attack(model, IMAGES, TARGETS, epsilon=0.05, steps=10)
    weights = model[1].weight.detach().view(2, 3, SIZE, SIZE)
    expected = IMAGES - 0.05 * torch.stack([weights[1].sign(), weights[0].sign()])
    torch.testing.assert_close(adversarial, expected)
    drop = target_scores(model, IMAGES, TARGETS) - target_scores(model, adversarial, TARGETS)
    torch.testing.assert_close(drop.detach(), 0.05 * torch.stack([weights[1].abs().sum(), weights[0].abs().sum()]))


def test_pgd_stays_in_the_ball_and_lowers_the_score_of_a_network() -> None:
    model = conv_model()
    adversarial = pgd_attack(model, IMAGES, TARGETS, epsilon=0.01, steps=5)
    assert float((adversarial - IMAGES).abs().max()) <= 0.01 + 1e-6
    with torch.no_grad():
        assert (target_scores(model, adversarial, TARGETS) < target_scores(model, IMAGES, TARGETS)).all()


def test_max_sensitivity_is_zero_for_a_constant_map_and_linear_in_the_radius() -> None:
    def constant(x, targets):
        return torch.ones(x.shape[0], SIZE, SIZE)

    def channel_sum(x, targets):
        return x.sum(1)

    assert max_sensitivity(constant, IMAGES, TARGETS).tolist() == [0.0, 0.0]
    small = max_sensitivity(channel_sum, IMAGES, TARGETS, radius=0.01, seed=3)
    large = max_sensitivity(channel_sum, IMAGES, TARGETS, radius=0.02, seed=3)
    # The same seed draws the same unit noise: the map's change doubles with the radius.
    torch.testing.assert_close(large, 2 * small, rtol=1e-4, atol=1e-6)
    bound = 0.01 * 3 * SIZE / IMAGES.sum(1).flatten(1).norm(dim=1)  # ‖Σ_c δ_c‖ <= 3 r √(H·W)
    assert (small > 0).all() and (small <= bound).all()


def test_explanation_shift_of_gradcam() -> None:
    model, adapter = conv_model(), ClassificationSaliencyAdapter()

    def explain(x, targets):
        return network_maps(adapter, model, "gradcam", x, targets, ["2"])

    shift = pgd_explanation_shift(explain, adapter.cam_model(model), IMAGES, TARGETS, epsilon=0.01, steps=3)
    assert set(shift) == {"pgd_spearman", "pgd_ssim", "pgd_score_drop"}
    assert all(v.shape == (2,) for v in shift.values())
    assert (shift["pgd_score_drop"] > 0).all() and (shift["pgd_spearman"] <= 1).all()
    unmoved = pgd_explanation_shift(explain, adapter.cam_model(model), IMAGES, TARGETS, epsilon=1e-9, steps=1)
    torch.testing.assert_close(unmoved["pgd_spearman"], torch.ones(2), atol=1e-4, rtol=0)


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="epsilon"):
        pgd_attack(linear_model(), IMAGES, TARGETS, epsilon=0)
    with pytest.raises(ConfigError, match="radius"):
        max_sensitivity(lambda x, t: x.sum(1), IMAGES, TARGETS, radius=-1)
