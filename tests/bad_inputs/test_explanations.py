"""Bad explanation settings: unknown methods, impossible options, maps of the wrong shape. Each is refused with our
own error naming the culprit (and the valid choices), before anything is computed or written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from visiondistill.core.errors import ConfigError
from visiondistill.explain import GradCAMCallback
from visiondistill.explain.attribution import attribute, baseline_images, compute_attributions, grid_feature_mask
from visiondistill.explain.faithfulness import perturbation_curves
from visiondistill.explain.robustness import max_sensitivity, pgd_attack
from visiondistill.explain.sanity import cascading_randomisation
from visiondistill.reporting.sections.explanations import ExplanationSettings

from ..support.bad_inputs import expect_cli_error, expect_user_error, unchanged

IMAGES = torch.zeros(2, 3, 8, 8)
MODEL = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))


def _score(output: torch.Tensor) -> torch.Tensor:
    return output[0]


TARGETS = [_score, _score]

CASES: dict[str, tuple[Callable[[], object], tuple[str, ...]]] = {
    "callback-unknown-method": (
        lambda: GradCAMCallback(method="magic"),
        ("'magic'", "gradcam", "integrated_gradients"),
    ),
    "callback-layerwise-attribution": (
        lambda: GradCAMCallback(method="occlusion", layerwise=True),
        ("'occlusion'", "layerwise=False"),
    ),
    "callback-faithfulness-interval": (
        lambda: GradCAMCallback(faithfulness_every_n_epochs=0),
        ("faithfulness_every_n_epochs", "0"),
    ),
    "attribution-unknown-method": (
        lambda: compute_attributions("shap", MODEL, IMAGES, TARGETS),
        ("'shap'", "kernel_shap"),
    ),
    "attribution-steps": (
        lambda: attribute("integrated_gradients", MODEL, IMAGES, TARGETS, n_steps=0),
        ("n_steps", "0"),
    ),
    "attribution-targets": (lambda: attribute("occlusion", MODEL, IMAGES, TARGETS[:1]), ("1 targets", "2 images")),
    "attribution-grid": (lambda: grid_feature_mask(8, 8, 16), ("grid", "16", "8")),
    "attribution-baseline": (lambda: baseline_images(IMAGES, "noise"), ("'noise'", "'zero'", "'blur'")),
    "deletion-mode": (lambda: perturbation_curves(MODEL, IMAGES, IMAGES[:, 0], TARGETS, "erase"), ("'erase'",)),
    "deletion-map-shape": (lambda: perturbation_curves(MODEL, IMAGES, IMAGES[0], TARGETS), ("N×H×W", "(3, 8, 8)")),
    "pgd-epsilon": (lambda: pgd_attack(MODEL, IMAGES, TARGETS, epsilon=-0.1), ("epsilon", "-0.1")),
    "sensitivity-samples": (
        lambda: max_sensitivity(lambda x, t: x.sum(1), IMAGES, TARGETS, n_samples=0),
        ("n_samples",),
    ),
    "sanity-unit": (lambda: cascading_randomisation(MODEL, lambda net: IMAGES[:, 0], units=["head"]), ("'head'",)),
    "report-unknown-method": (lambda: ExplanationSettings(methods=("magic",)), ("'magic'", "gradcam", "lime")),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_explanation_settings_are_refused(case: str) -> None:
    call, names = CASES[case]
    expect_user_error(call, *names, error_type=ConfigError)


def test_report_refuses_an_unknown_method_before_reading_runs(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with unchanged(tmp_path):
        expect_cli_error(["report", str(run), "--explain-methods", "gradcam,magic"], capsys, "'magic'", "occlusion")
