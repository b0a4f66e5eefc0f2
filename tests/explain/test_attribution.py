"""Captum attribution maps: the methods' defining properties on tiny models, and the CAM maps' form."""

from __future__ import annotations

import pytest
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from visiondistill.core.adapters import ClassRegionTarget
from visiondistill.core.errors import ConfigError
from visiondistill.explain.attribution import (
    ATTRIBUTION_METHODS,
    attribute,
    attribution_method,
    baseline_images,
    compute_attributions,
    explanation_maps,
    grid_feature_mask,
    scale_maps,
    target_scores,
)

SIZE = 32


def linear_model(seed: int = 0, classes: int = 3, size: int = SIZE) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, classes)).eval()


def conv_model(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    ).eval()


def images(n: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_occlusion_of_a_linear_model_is_weights_times_input() -> None:
    model, x = linear_model(), images()
    targets = [ClassifierOutputTarget(2), ClassifierOutputTarget(0)]
    result = attribute("occlusion", model, x, targets, window=1, stride=1)
    weights = model[1].weight.detach().view(3, 3, SIZE, SIZE)
    expected = torch.stack([weights[2] * x[0], weights[0] * x[1]])
    # A 1-pixel window covers all channels: each channel gets the pixel's whole score drop (Captum's convention).
    torch.testing.assert_close(result.sum(1) / 3, expected.sum(1), rtol=1e-4, atol=1e-4)


def test_integrated_gradients_is_complete() -> None:
    model, x = conv_model(), images()
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    with torch.enable_grad():
        result = attribute("integrated_gradients", model, x, targets, n_steps=64)
    with torch.no_grad():
        gap = target_scores(model, x, targets) - target_scores(model, torch.zeros_like(x), targets)
    torch.testing.assert_close(result.flatten(1).sum(1), gap, rtol=2e-2, atol=2e-3)


def test_kernel_shap_of_a_linear_model_gives_each_cell_its_contribution() -> None:
    model, x = linear_model(size=8), images(1, size=8)
    targets = [ClassifierOutputTarget(1)]
    result = attribute("kernel_shap", model, x, targets, grid=2, n_samples=200)
    mask = grid_feature_mask(8, 8, 2)[0, 0]
    contribution = (model[1].weight[1].detach().view(3, 8, 8) * x[0]).sum(0)
    for cell in range(4):
        inside = mask == cell
        # Every pixel and channel of a cell carries the cell's value: a linear model's Shapley value, its contribution.
        assert torch.allclose(result[0, 0][inside], result[0, 0][inside][0])
        assert float(result[0, 0][inside][0]) == pytest.approx(float(contribution[inside].sum()), abs=1e-3)


@pytest.mark.parametrize("method", ATTRIBUTION_METHODS)
def test_maps_have_the_cam_form(method: str) -> None:
    model, x = conv_model(), images()
    maps = compute_attributions(method, model, x, [ClassifierOutputTarget(0)] * 2, n_samples=16, n_steps=8)
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == torch.float32 and maps.device.type == "cpu"
    assert float(maps.min()) >= 0 and float(maps.amax(dim=(1, 2)).min()) == pytest.approx(1, abs=1e-5)


def test_segmentation_region_target_is_explained_inside_its_region() -> None:
    # A "segmenter" whose class-1 logit map is the input's first channel: only the region's pixels matter.
    model = nn.Sequential(nn.Conv2d(3, 2, 1)).eval()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
        model[0].weight[1, 0] = 1.0
    region = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    region[4:12, 20:28] = True
    x = images(1).abs()
    maps = compute_attributions("integrated_gradients", model, x, [ClassRegionTarget(1, region)])
    assert float(maps[0][~region].max()) == 0.0 and float(maps[0][region].min()) > 0


def test_scale_maps_positive_and_absolute() -> None:
    attributions = torch.tensor([[-2.0, 1.0], [0.0, 3.0]]).view(1, 1, 2, 2)
    torch.testing.assert_close(scale_maps(attributions, "positive")[0], torch.tensor([[0, 1 / 3], [0, 1]]))
    torch.testing.assert_close(scale_maps(attributions, "absolute")[0], torch.tensor([[2 / 3, 1 / 3], [0, 1]]))
    assert scale_maps(torch.full((1, 2, 3, 3), 5e-9), "positive").abs().sum() == 0  # constant: all zeros


def test_explanation_maps_dispatches_cams_and_attributions() -> None:
    model, x = conv_model(), images()
    targets = [ClassifierOutputTarget(0)] * 2
    cam = explanation_maps("gradcam", model, x, targets, layers=[model[2]])
    ig = explanation_maps("ig", model, x, targets, n_steps=4)
    assert cam.shape == ig.shape == (2, SIZE, SIZE)
    with pytest.raises(ConfigError, match="attribution method"):
        explanation_maps("magic", model, x, targets, layers=[model[2]])
    with pytest.raises(ConfigError, match="needs target layers"):
        explanation_maps("gradcam", model, x, targets)


def test_names_baselines_and_bad_settings() -> None:
    assert attribution_method("IG") == "integrated_gradients"
    with pytest.raises(ConfigError, match="kernel_shap"):
        attribution_method("shap")
    x = images(1)
    assert baseline_images(x, "zero").abs().sum() == 0
    blurred = baseline_images(x, "blur")
    assert blurred.shape == x.shape and blurred.std() < x.std()
    with pytest.raises(ConfigError, match="grid"):
        grid_feature_mask(8, 8, 9)
    with pytest.raises(ConfigError, match="n_steps"):
        attribute("integrated_gradients", conv_model(), x, [ClassifierOutputTarget(0)], n_steps=0)
    with pytest.raises(ConfigError, match="one target per image"):
        attribute("occlusion", conv_model(), x, [])


def _fit_with(callback, tmp_path, max_epochs: int = 1):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from visiondistill.models import ClassifierSpec
    from visiondistill.tasks import ClassificationTask

    from ..conftest import quadrant_images

    task = ClassificationTask(
        student=ClassifierSpec(name="test_resnet"), teacher=ClassifierSpec(name="test_efficientnet"), num_classes=4
    )
    loader = DataLoader(quadrant_images(n=8), batch_size=4)
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=max_epochs,
        limit_train_batches=1,
        limit_val_batches=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(task, loader, loader)
    return trainer


def test_callback_explains_with_a_captum_method_and_measures_faithfulness(tmp_path) -> None:
    import numpy as np

    from visiondistill.explain import GradCAMCallback

    callback = GradCAMCallback(
        method="integrated_gradients",
        num_samples=2,
        log_images=False,
        faithfulness_every_n_epochs=1,
        attribution_options={"n_steps": 4},
        save_dir=tmp_path / "saliency",
    )
    trainer = _fit_with(callback, tmp_path)
    data = np.load(tmp_path / "saliency" / "epoch_000" / "maps.npz")
    assert str(data["method"]) == "integrated_gradients"
    for role in ("student", "teacher"):
        maps = data[f"{role}_maps"]
        # Pixel-level maps: far more distinct values than the 2×2 last stage of a 32 px test_resnet has cells.
        assert maps.shape == (2, SIZE, SIZE) and len(np.unique(maps[0])) > 64
        for key in ("deletion_auc", "insertion_auc", "road_combined", "average_drop", "increase_in_confidence"):
            assert data[f"faithfulness_{role}_{key}"].shape == (2,)
            logged = float(trainer.logged_metrics[f"val/faithfulness/{role}/{key}"])
            assert logged == pytest.approx(float(np.nanmean(data[f"faithfulness_{role}_{key}"])), abs=1e-5)
    assert "val/saliency/pearson" in trainer.logged_metrics


def test_callback_measures_faithfulness_only_at_its_interval(tmp_path) -> None:
    from visiondistill.explain import GradCAMCallback

    callback = GradCAMCallback(num_samples=2, log_images=False, faithfulness_every_n_epochs=2)
    seen = []
    # Record the calls only: the measures themselves are tested above.
    callback._faithfulness = lambda pl_module, role, *args: seen.append((pl_module.current_epoch, role)) or {}
    _fit_with(callback, tmp_path, max_epochs=2)
    assert seen == [(1, "student"), (1, "teacher")]


def test_callback_rejects_layerwise_attribution_and_unknown_methods() -> None:
    from visiondistill.explain import GradCAMCallback

    with pytest.raises(ConfigError, match="layerwise"):
        GradCAMCallback(method="occlusion", layerwise=True)
    with pytest.raises(ConfigError, match="integrated_gradients"):
        GradCAMCallback(method="magic")
    with pytest.raises(ConfigError, match="faithfulness_every_n_epochs"):
        GradCAMCallback(faithfulness_every_n_epochs=0)
