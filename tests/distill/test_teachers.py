"""Several teachers (docs/teachers.md): the weighted ensemble of soft targets against a hand formula, one term per
teacher, feature and explanation callbacks that name their teacher, checkpoints and the report's agreement table, on
classification and segmentation with real Trainers and tiny models."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch.utils.data import DataLoader

from visiondistill.cli.lightning import VisionDistillCLI
from visiondistill.core.recorder import probe_features
from visiondistill.core.teachers import ensemble_logits
from visiondistill.distill import AttentionTransfer, LogitDistillation, PixelwiseDistillation, losses
from visiondistill.explain import FeatureMapCallback, GradCAMCallback
from visiondistill.reporting.loader import load_task_module
from visiondistill.reporting.measure import several_teachers, teacher_prediction_agreement
from visiondistill.tasks import ClassificationTask, SegmentationTask

from ..conftest import quadrant_images
from ..support.cli import tiny_overrides
from ..support.segmentation import TINY_STUDENT, TINY_TEACHER, square_masks

TWO_TEACHERS = [
    {"id": "a", "weight": 3.0, "name": "test_resnet"},
    {"id": "b", "weight": 1.0, "name": "test_efficientnet"},
]


def _softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _hand_ensemble(teachers: list[np.ndarray], weights: list[float], temperature: float) -> np.ndarray:
    """The ensemble's soft target, written out: Σ_i w_i softmax(t_i / T) / Σ_i w_i."""
    return sum(w * _softmax(t / temperature) for w, t in zip(weights, teachers, strict=True)) / sum(weights)


def _hand_kl(target: np.ndarray, student: np.ndarray, temperature: float) -> np.ndarray:
    """Per-row (per-pixel) T² · KL(target ‖ softmax(s / T)), summed over classes (dim 1)."""
    q = _softmax(student / temperature)
    return temperature**2 * (target * (np.log(target) - np.log(q))).sum(axis=1)


@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4, 4)], ids=["classification", "segmentation"])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_ensemble_logits_give_the_weighted_average_of_soft_targets(shape, temperature):
    generator = torch.Generator().manual_seed(0)
    teachers = [3 * torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(3)]
    weights = [0.5, 2.0, 1.5]
    logits = ensemble_logits(teachers, weights, temperature)
    expected = _hand_ensemble([t.numpy() for t in teachers], weights, temperature)
    np.testing.assert_allclose((logits / temperature).softmax(dim=1).numpy(), expected, rtol=1e-10, atol=1e-12)
    assert ensemble_logits(teachers[:1], [2.0], temperature) is teachers[0]  # one teacher: its logits unchanged


def _recorder(outputs: dict, key: str):
    def hook(_module, _inputs, output):
        _latest(outputs, key, output)

    return hook


def _latest(store: dict, key: str, value: torch.Tensor) -> None:
    """Keeps the latest value seen under ``key``: the training step's (the feature probes in ``setup`` run before)."""
    store[key] = value.detach().clone()


def _fit_one_step(task, loader, callbacks, trainer_kwargs) -> dict[str, float]:
    trainer = pl.Trainer(**(trainer_kwargs | {"max_steps": 1}), callbacks=callbacks)
    trainer.fit(task, loader)
    return {key: float(value) for key, value in trainer.callback_metrics.items()}


def _hook_outputs(task) -> dict[str, torch.Tensor]:
    outputs: dict[str, torch.Tensor] = {}
    task.student.register_forward_hook(_recorder(outputs, "student"))
    for teacher_id, teacher in task.teachers.items():
        teacher.register_forward_hook(_recorder(outputs, teacher_id))
    return outputs


def test_classification_ensemble_kd_and_one_term_per_teacher(trainer_kwargs):
    torch.manual_seed(0)
    task = ClassificationTask(student={"name": "test_resnet"}, teachers=TWO_TEACHERS, num_classes=4, warmup_epochs=0)
    assert list(task.teachers) == ["a", "b"] and task.teacher is task.teachers["a"]
    assert task.teacher_weights == {"a": 3.0, "b": 1.0}
    outputs = _hook_outputs(task)
    callbacks = [
        LogitDistillation(temperature=2.0),  # the ensemble (default)
        LogitDistillation(temperature=2.0, teacher="b", name="kd_b"),  # one term per teacher
        LogitDistillation(temperature=2.0, teacher="a", name="kd_a"),
    ]
    logged = _fit_one_step(task, DataLoader(quadrant_images(n=8), batch_size=8), callbacks, trainer_kwargs)
    s, a, b = (outputs[key].double().numpy() for key in ("student", "a", "b"))
    ensemble = _hand_kl(_hand_ensemble([a, b], [3.0, 1.0], 2.0), s, 2.0).mean()
    assert logged["train/distill/kd_step"] == pytest.approx(ensemble, rel=1e-5)
    assert logged["train/distill/kd_b_step"] == pytest.approx(_hand_kl(_softmax(b / 2.0), s, 2.0).mean(), rel=1e-5)
    assert logged["train/distill/kd_a_step"] == pytest.approx(_hand_kl(_softmax(a / 2.0), s, 2.0).mean(), rel=1e-5)
    # The three terms differ: the ensemble is neither teacher.
    assert len({round(logged[f"train/distill/{k}_step"], 6) for k in ("kd", "kd_a", "kd_b")}) == 3
    _assert_frozen(task)
    task.train()  # what a user or an older Lightning calls on the whole module: every teacher stays frozen
    _assert_frozen(task)
    task.teachers["b"].train().requires_grad_(True)  # and the callbacks freeze every teacher again at each step
    callbacks[0].on_train_batch_start(SimpleNamespace(current_epoch=5), task, None, 0)
    _assert_frozen(task)


def _assert_frozen(task) -> None:
    for teacher in task.teachers.values():  # every teacher, not only the first
        assert not any(m.training for m in teacher.modules()) and not any(p.requires_grad for p in teacher.parameters())


def _segmentation_task() -> SegmentationTask:
    teacher = dataclasses.asdict(TINY_TEACHER)
    teachers = [teacher | {"id": "big", "weight": 1.0}, teacher | {"id": "other", "weight": 0.25}]
    return SegmentationTask(student=TINY_STUDENT, teachers=teachers, num_classes=3, warmup_epochs=0)


def test_segmentation_pixel_ensemble_and_features_of_a_named_teacher(trainer_kwargs):
    torch.manual_seed(0)
    task = _segmentation_task()
    outputs = _hook_outputs(task)
    features: dict[str, torch.Tensor] = {}
    student_layer = task.student.get_submodule("encoder.model.layer2")
    student_layer.register_forward_hook(_recorder(features, "student"))
    task.student.register_forward_pre_hook(lambda _m, args: _latest(features, "images", args[0]))
    at = AttentionTransfer(["encoder.model.layer2"], ["encoder.model.layer2"], weight=1.0, teacher="other")
    callbacks = [PixelwiseDistillation(temperature=2.0), PixelwiseDistillation(teacher="other", name="pkd_other"), at]
    logged = _fit_one_step(task, DataLoader(square_masks(n=4), batch_size=4), callbacks, trainer_kwargs)
    s, big, other = (outputs[key].double().numpy() for key in ("student", "big", "other"))
    expected = _hand_kl(_hand_ensemble([big, other], [1.0, 0.25], 2.0), s, 2.0).mean()  # mean over every pixel
    assert logged["train/distill/pixelwise_kd_step"] == pytest.approx(expected, rel=1e-5)
    assert logged["train/distill/pkd_other_step"] == pytest.approx(_hand_kl(_softmax(other), s, 1.0).mean(), rel=1e-5)
    # Attention transfer read the layer of teacher "other", not of the first teacher.
    images = features["images"]
    layer = "encoder.model.layer2"
    named = {t: probe_features(task.teachers[t], images, [layer])[layer] for t in ("big", "other")}
    read = {t: float(losses.attention_transfer_loss(features["student"], named[t])) for t in named}
    assert logged["train/distill/attention_transfer_step"] == pytest.approx(read["other"], rel=1e-4)
    assert read["other"] != pytest.approx(read["big"], rel=1e-2)


def test_explanation_callbacks_compare_with_the_named_teacher(trainer_kwargs):
    torch.manual_seed(0)
    task = ClassificationTask(student={"name": "test_resnet"}, teachers=TWO_TEACHERS, num_classes=4, warmup_epochs=0)
    loader = DataLoader(quadrant_images(n=8), batch_size=8)
    seen: dict[str, int] = {}
    for teacher_id, teacher in task.teachers.items():
        teacher.register_forward_hook(lambda *_args, key=teacher_id: seen.__setitem__(key, seen.get(key, 0) + 1))
    maps = FeatureMapCallback(num_samples=4, log_images=False, teacher="b")
    cams = GradCAMCallback(num_samples=4, log_images=False, teacher="b")
    trainer = pl.Trainer(**(trainer_kwargs | {"max_steps": 1, "limit_val_batches": 1}), callbacks=[maps, cams])
    trainer.fit(task, loader, loader)
    # Every teacher runs once in the training step; in the callbacks' probes only the named one runs.
    assert seen["a"] == 1 and seen["b"] > 1, seen
    assert maps.teacher_id == cams.teacher_id == "b"


def test_teachers_stay_out_of_checkpoints_and_the_report_measures_agreement(tmp_path, trainer_kwargs):
    torch.manual_seed(0)
    # Teacher checkpoints as the teacher runs write them: the network under ``student.``.
    specs = []
    for entry in TWO_TEACHERS:
        run = ClassificationTask(student={"name": entry["name"]}, num_classes=4)
        path = tmp_path / f"teacher_{entry['id']}.ckpt"
        torch.save({"state_dict": {f"student.{k}": v for k, v in run.student.state_dict().items()}}, path)
        specs.append(entry | {"checkpoint": str(path)})
    task = ClassificationTask(student={"name": "test_resnet"}, teachers=specs, num_classes=4, warmup_epochs=0)
    trainer = pl.Trainer(**(trainer_kwargs | {"max_steps": 1}), callbacks=[LogitDistillation()])
    trainer.fit(task, DataLoader(quadrant_images(n=8), batch_size=8))
    checkpoint = tmp_path / "student.ckpt"
    trainer.save_checkpoint(checkpoint)
    state = torch.load(checkpoint, weights_only=False)
    assert not [k for k in state["state_dict"] if k.startswith(("teacher.", "teachers."))]
    assert [t["id"] for t in state["hyper_parameters"]["teachers"]] == ["a", "b"]
    loaded = load_task_module(checkpoint)  # without its teachers, as the one teacher is left out
    assert loaded.teachers is None and loaded.teacher is None
    torch.testing.assert_close(loaded.student.state_dict(), task.student.state_dict())

    # The report's teachers: rebuilt from the recorded specs, with their checkpoints' weights.
    run = SimpleNamespace(hparams=state["hyper_parameters"])
    teachers, weights = several_teachers(run, loaded)
    assert weights == {"a": 3.0, "b": 1.0}
    torch.testing.assert_close(teachers["b"].state_dict(), task.teachers["b"].state_dict())
    images = quadrant_images(n=16)[:][0]
    agreement = teacher_prediction_agreement(loaded.student, teachers, weights, images)
    with torch.no_grad():
        s = loaded.student(images).argmax(1)
        a, b = (teachers[k](images).softmax(1) for k in ("a", "b"))
    assert agreement["a"] == pytest.approx(float((s == a.argmax(1)).float().mean()))
    assert agreement["b"] == pytest.approx(float((s == b.argmax(1)).float().mean()))
    assert agreement["ensemble"] == pytest.approx(float((s == (0.75 * a + 0.25 * b).argmax(1)).float().mean()))


def _readme_teachers_config() -> dict:
    """The README's several-teachers config example, as written."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text[text.index("**Several teachers**") :]
    start = section.index("```yaml") + len("```yaml")
    return yaml.safe_load(section[start : section.index("```", start)])


def test_readme_several_teachers_example_trains(tmp_path, monkeypatch):
    example = _readme_teachers_config()
    monkeypatch.chdir(tmp_path)  # the example's checkpoint paths are relative to the working folder
    torch.manual_seed(0)
    for entry in example["model"]["init_args"]["teachers"]:  # teacher checkpoints where the example expects them
        teacher = ClassificationTask(student={"name": entry["name"]}, num_classes=6)
        path = Path(entry["checkpoint"])
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": {f"student.{k}": v for k, v in teacher.student.state_dict().items()}}, path)
    config = example | {
        "data": {"class_path": "visiondistill.data.ShapesClassification"},
        "trainer": example["trainer"] | {"logger": {"class_path": "pytorch_lightning.loggers.CSVLogger"}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    overrides = tiny_overrides(tmp_path, "two_teachers", num_train=12, num_val=6, num_test=0, batch_size=6)
    cli = VisionDistillCLI(args=["--config", "config.yaml", *overrides, "--trainer.max_steps=1"], run=False)
    assert list(cli.model.teachers) == ["big", "other"] and cli.model.teacher_weights == {"big": 0.7, "other": 0.3}
    cli.trainer.fit(cli.model, cli.datamodule)
    logged = cli.trainer.callback_metrics
    assert float(logged["train/distill/kd_step"]) > 0 and float(logged["train/distill/attention_transfer_step"]) > 0
    at = next(cb for cb in cli.trainer.callbacks if isinstance(cb, AttentionTransfer))
    assert at.teacher_network(cli.model) is cli.model.teachers["big"]
