"""The demo's classification configs explain a layer whose maps have at least 8×8 cells at the configs' image size.

Grad-CAM upsamples its map to the input, so the resolution that matters is the explained layer's own grid: a 4×4
layer gives 16 distinct values per map, too few for agreement metrics to tell two students apart.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from visiondistill.core.recorder import probe_features
from visiondistill.demo import TASKS
from visiondistill.explain import GradCAMCallback
from visiondistill.models import ClassifierSpec
from visiondistill.models.classifiers import create_classifier

ROOT = Path(__file__).resolve().parents[2]
#: The demo's classification configs with a GradCAMCallback, and the explanation config beside them.
CONFIGS = sorted(
    {run.config for run in TASKS["classification"].runs} | {"configs/classification/shapes_kd_saliency.yaml"}
)


def _callbacks(config: dict, name: str) -> list[dict]:
    return [c for c in config["trainer"].get("callbacks") or [] if c["class_path"].endswith(name)]


def _network(spec: dict, num_classes: int) -> torch.nn.Module:
    spec = {key: value for key, value in spec.items() if key != "checkpoint"}  # the architecture is what counts
    return create_classifier(ClassifierSpec(**spec), num_classes).eval()


@pytest.mark.parametrize("config_path", [c for c in CONFIGS if "GradCAMCallback" in (ROOT / c).read_text()])
def test_the_explained_layers_give_at_least_8x8_maps(config_path: str):
    config = yaml.safe_load((ROOT / config_path).read_text())
    model_args = config["model"]["init_args"]
    size = config["data"]["init_args"]["image_size"]
    images = torch.randn(2, 3, size, size)
    for entry in _callbacks(config, "GradCAMCallback"):
        callback = GradCAMCallback(**entry["init_args"])
        for role, layers in (("student", callback.student_layers), ("teacher", callback.teacher_layers)):
            network = _network(model_args[role], model_args["num_classes"])
            for layer, feature in probe_features(network, images, list(layers), role=role).items():
                assert feature.shape[-2] >= 8 and feature.shape[-1] >= 8, (
                    f"{config_path}: the {role}'s Grad-CAM layer {layer} gives {tuple(feature.shape[-2:])} maps at "
                    f"{size} px; explain an earlier stage"
                )


def test_the_demo_explains_with_a_gradcam_callback():
    # The parametrised test above must not pass vacuously: the demo's distilled run has a GradCAMCallback.
    distilled = next(run for run in TASKS["classification"].runs if run.distilled)
    assert _callbacks(yaml.safe_load((ROOT / distilled.config).read_text()), "GradCAMCallback")
