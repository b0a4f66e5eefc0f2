"""Classifiers from every source: timm, torchvision, a hub id in the local cache, a model class; local weights with
the head re-initialised; pretrained weights read from local caches only."""

from __future__ import annotations

import json
import textwrap
import warnings
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from huggingface_hub import constants
from safetensors.torch import save_file

from visiondistill.core.errors import ConfigError
from visiondistill.models import CheckpointError, ClassifierSpec, create_classifier, load_weights
from visiondistill.models.sources import split_source


def _close(a: dict, b: dict, keys) -> bool:
    return all(torch.equal(a[k], b[k]) for k in keys)


@pytest.mark.parametrize(
    ("spec", "module"),
    [
        (ClassifierSpec(name="test_resnet"), "timm.models.resnet"),
        (ClassifierSpec(name="torchvision/mobilenet_v3_small"), "torchvision.models.mobilenetv3"),
        (ClassifierSpec(name="resnet18", source="torchvision"), "torchvision.models.resnet"),
    ],
    ids=["timm", "torchvision-prefix", "torchvision-source"],
)
def test_named_sources_build_for_the_task_classes(spec: ClassifierSpec, module: str):
    model = create_classifier(spec, num_classes=5).eval()
    assert type(model).__module__ == module
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_split_source_reads_prefixes_and_refuses_contradictions():
    assert split_source("torchvision/resnet18", None) == ("torchvision", "resnet18")
    assert split_source("hf-hub:timm/x", None) == ("hf-hub", "timm/x")
    assert split_source("resnet18", None) == ("timm", "resnet18")
    with pytest.raises(ConfigError, match="drop one of them"):
        split_source("torchvision/resnet18", "timm", "student")
    with pytest.raises(ConfigError, match="source 'keras' is unknown"):
        split_source("resnet18", "keras", "student")


def test_model_class_builds_any_module_with_num_classes_and_model_args(tmp_path: Path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            class TinyNet(nn.Module):
                def __init__(self, num_classes, width=4, in_channels=3):
                    super().__init__()
                    self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.ReLU())
                    self.head = nn.Linear(width, num_classes)

                def forward(self, x):
                    return self.head(self.body(x).mean((2, 3)))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ClassifierSpec(model_class="my_nets.TinyNet", model_args={"width": 6}, in_channels=1)
    model = create_classifier(spec, num_classes=3)
    assert type(model).__name__ == "TinyNet" and model.head.in_features == 6 and model.head.out_features == 3
    assert model.body[0].in_channels == 1
    with pytest.raises(
        ConfigError,
        match=r"refused model_args \['depth', 'in_channels', 'num_classes'\].*unexpected keyword argument 'depth'",
    ):
        create_classifier(ClassifierSpec(model_class="my_nets.TinyNet", model_args={"depth": 2}), num_classes=3)
    with pytest.raises(ConfigError, match="either name"):
        create_classifier(ClassifierSpec(name="test_resnet", model_class="my_nets.TinyNet"), num_classes=3)


def test_local_imagenet_style_file_initialises_a_model_for_fewer_classes(tmp_path: Path):
    source = torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=10)
    path = tmp_path / "imagenet_like.pth"
    torch.save(source.state_dict(), path)
    spec = ClassifierSpec(name="torchvision/mobilenet_v3_small", checkpoint=str(path))
    with pytest.raises(CheckpointError, match=r"classifier\.3\.weight: checkpoint \(10, 1024\) vs model \(4, 1024\)"):
        create_classifier(spec, num_classes=4, role="student")
    spec.head = "reinit"
    with pytest.warns(UserWarning, match=r"2 classifier keys .* classifier\.3\.weight, classifier\.3\.bias"):
        model = create_classifier(spec, num_classes=4, role="student")
    backbone = [k for k in model.state_dict() if not k.startswith("classifier.3.")]
    assert len(backbone) > 100 and _close(model.state_dict(), source.state_dict(), backbone)
    assert model.classifier[3].out_features == 4


def test_load_weights_returns_the_skipped_keys_and_keeps_other_checks():
    source, target = timm.create_model("test_resnet", num_classes=10), timm.create_model("test_resnet", num_classes=3)
    with pytest.warns(UserWarning):
        skipped = load_weights(target, source.state_dict(), source="x.pth", role="student", head="reinit")
    assert skipped == ["fc.weight", "fc.bias"]
    assert _close(target.state_dict(), source.state_dict(), [k for k in source.state_dict() if not k.startswith("fc.")])
    broken = {k: v for k, v in source.state_dict().items() if k != "conv1.0.weight"}
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): conv1\.0\.weight"):
        load_weights(target, broken, source="x.pth", role="student", head="reinit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped, nothing said
        assert load_weights(target, target.state_dict(), source="y.pth", head="keep") == []


def _fake_hub_repo(cache: Path, repo: str, model: torch.nn.Module, architecture: str, num_classes: int) -> None:
    """A Hugging Face cache entry as `hf download` leaves it: refs/main -> snapshots/<commit>/files."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    config = {"architecture": architecture, "num_classes": num_classes, "pretrained_cfg": {"classifier": "fc"}}
    (snapshot / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "model.safetensors"))


def test_hub_id_is_read_from_the_local_cache_only(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    source = timm.create_model("test_resnet", num_classes=10)
    _fake_hub_repo(tmp_path, "someone/tiny-resnet", source, "test_resnet", num_classes=10)
    model = create_classifier(ClassifierSpec(name="hf-hub:someone/tiny-resnet", pretrained=True), num_classes=4)
    assert model.fc.out_features == 4  # timm re-initialises the classifier for the task's classes
    backbone = [k for k in source.state_dict() if not k.startswith("fc.")]
    assert _close(model.state_dict(), source.state_dict(), backbone)
    fresh = create_classifier(ClassifierSpec(name="someone/tiny-resnet", source="hf-hub"), num_classes=4)
    assert type(fresh).__name__ == "ResNet" and not _close(fresh.state_dict(), source.state_dict(), backbone)


def test_timm_pretrained_weights_come_from_the_cache_or_fail_naming_it(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    hub_id = timm.models.get_pretrained_cfg("test_resnet").hf_hub_id
    with pytest.raises(CheckpointError, match=rf"{hub_id}.*not in the local Hugging Face cache.*hf download"):
        create_classifier(ClassifierSpec(name="test_resnet", pretrained=True), num_classes=4)
    source = timm.create_model("test_resnet", num_classes=1000)
    _fake_hub_repo(tmp_path, hub_id, source, "test_resnet", num_classes=1000)
    model = create_classifier(ClassifierSpec(name="test_resnet", pretrained=True), num_classes=4)
    assert _close(model.state_dict(), source.state_dict(), ["conv1.0.weight", "layer4.0.conv1.weight"])


def test_torchvision_pretrained_weights_come_from_torch_hub_cache(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    spec = ClassifierSpec(name="torchvision/mobilenet_v3_small", pretrained=True)
    with pytest.raises(CheckpointError, match=r"not in the local cache: .*hub/checkpoints/mobilenet_v3_small"):
        create_classifier(spec, num_classes=4)
    weights = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT
    source = torchvision.models.get_model("mobilenet_v3_small", weights=None)  # 1000 classes, as the real file
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(source.state_dict(), tmp_path / "hub" / "checkpoints" / Path(weights.url).name)
    with pytest.warns(UserWarning, match=r"classifier\.3\.weight"):
        model = create_classifier(spec, num_classes=4)
    assert _close(model.state_dict(), source.state_dict(), ["features.0.0.weight", "classifier.0.weight"])


def test_teacher_reads_source_and_model_class_from_our_checkpoint(tmp_path: Path):
    student = create_classifier(ClassifierSpec(name="torchvision/mobilenet_v3_small"), num_classes=3)
    path = tmp_path / "run.ckpt"
    recorded = {"name": "torchvision/mobilenet_v3_small", "source": None, "model_class": None, "model_args": {}}
    hparams = {"student": recorded}
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    torch.save({"hyper_parameters": hparams, "state_dict": state}, path)
    teacher = create_classifier(ClassifierSpec(checkpoint=str(path)), num_classes=3, role="teacher")
    assert type(teacher).__module__ == "torchvision.models.mobilenetv3"
    assert _close(teacher.state_dict(), student.state_dict(), list(student.state_dict()))


def test_keypoint_backbone_pretrained_weights_come_from_the_cache_only(tmp_path: Path, monkeypatch):
    from visiondistill.models import KeypointModelSpec, create_keypoint_model

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    spec = KeypointModelSpec(backbone="test_resnet", deconv_channels=[8], pretrained=True)
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        create_keypoint_model(spec, num_keypoints=2)
    source = timm.create_model("test_resnet", num_classes=1000)
    _fake_hub_repo(tmp_path, timm.models.get_pretrained_cfg("test_resnet").hf_hub_id, source, "test_resnet", 1000)
    model = create_keypoint_model(spec, num_keypoints=2)
    torch.testing.assert_close(model.backbone.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])
