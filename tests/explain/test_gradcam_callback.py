from __future__ import annotations

import copy
import math
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from visiondistill.distill import LayerNotFoundError
from visiondistill.explain import (
    SALIENCY_KEYS,
    GradCAMCallback,
    TokenReshape,
    cam_method,
    compute_cams,
    compute_layer_cams,
    draw_probe_batch,
)
from visiondistill.models import ClassifierSpec
from visiondistill.tasks import ClassificationTask

SIZE, CLASSES, PROBES = 48, 4, 8


def quadrant_data(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images with a bright square in one quadrant (the label), and the square's mask."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.1 * torch.randn(n, 3, SIZE, SIZE, generator=generator)
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    half, side = SIZE // 2, SIZE // 4
    for i, label in enumerate(labels.tolist()):
        top, left = (label // 2) * half + side // 2, (label % 2) * half + side // 2
        images[i, :, top : top + side, left : left + side] += 1.0
        masks[i, top : top + side, left : left + side] = True
    return images, labels, masks


def loaders(shuffle: bool = False) -> tuple[DataLoader, DataLoader]:
    images, labels, _ = quadrant_data()
    dataset = TensorDataset(images, labels)
    return DataLoader(dataset, batch_size=8, shuffle=shuffle), DataLoader(dataset, batch_size=8)


def make_task(teacher: bool = True, drop_rate: float = 0.0) -> ClassificationTask:
    return ClassificationTask(
        student=ClassifierSpec(name="test_resnet", kwargs={"drop_rate": drop_rate}),
        teacher=ClassifierSpec(name="test_efficientnet") if teacher else None,
        num_classes=CLASSES,
    )


def make_trainer(tmp_path: Path, callbacks: list, logger: bool = False, max_epochs: int = 1, **kwargs) -> pl.Trainer:
    options = {
        "default_root_dir": tmp_path,
        "max_epochs": max_epochs,
        "limit_train_batches": 2,
        "limit_val_batches": 1,
        "accelerator": "cpu",
        "devices": 1,
        "logger": TensorBoardLogger(tmp_path, name="tb") if logger else False,
        "callbacks": callbacks,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
    }
    return pl.Trainer(**{**options, **kwargs})


def test_fit_logs_metrics_maps_pngs_and_tensorboard_grid(tmp_path):
    callback = GradCAMCallback(num_samples=PROBES, student_layers=-2, teacher_layers=-2)
    calls, probe = [], callback.probe
    callback.probe = lambda *args: calls.append(args[0].sanity_checking) or probe(*args)
    trainer = make_trainer(tmp_path, [callback], logger=True, num_sanity_val_steps=1)
    trainer.fit(make_task(), *loaders())
    assert calls == [False]  # not during the sanity check

    for key in SALIENCY_KEYS:
        value = trainer.logged_metrics[f"val/saliency/{key}"]
        assert math.isfinite(float(value)), key
    assert -1.0 <= float(trainer.logged_metrics["val/saliency/pearson"]) <= 1.0
    assert not any("pointing_game" in key for key in trainer.logged_metrics)  # (images, labels): no masks

    out = Path(trainer.log_dir) / "saliency" / "epoch_000"
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "maps.npz"]
    data = np.load(out / "maps.npz")
    assert data["images"].shape == (PROBES, 3, SIZE, SIZE) and data["images"].dtype == np.float32
    assert 0.0 <= data["images"].min() and data["images"].max() <= 1.0
    for key in ("teacher_maps", "student_maps"):
        assert data[key].shape == (PROBES, SIZE, SIZE) and data[key].dtype == np.float32
    for key in ("targets", "explained", "teacher_pred", "student_pred", "indices", *SALIENCY_KEYS):
        assert data[key].shape == (PROBES,), key
    np.testing.assert_array_equal(data["explained"], data["teacher_pred"])  # target="teacher"
    assert int(data["epoch"]) == 0 and list(data["class_names"]) == ["0", "1", "2", "3"]
    np.testing.assert_allclose(data["pearson"].mean(), float(trainer.logged_metrics["val/saliency/pearson"]), 1e-5)

    events = EventAccumulator(trainer.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert "val/saliency/grid" in events.Tags()["images"]
    # TensorBoard gets the very PNG written to disk (encoded once).
    (logged,) = events.Images("val/saliency/grid")
    assert logged.encoded_image_string == (out / "grid.png").read_bytes()
    grid = np.asarray(Image.open(out / "grid.png"))
    assert (logged.height, logged.width) == grid.shape[:2] and logged.step == trainer.global_step


class _Snapshot(Callback):
    """Puts the module in an unusual state just before the GradCAM callback runs, and records it."""

    def on_validation_epoch_end(self, trainer, pl_module):
        with torch.inference_mode(False):
            pl_module.student.train()
            pl_module.student.layer1.eval()
            for i, parameter in enumerate(pl_module.student.parameters()):
                parameter.grad = torch.randn_like(parameter) if i % 2 == 0 else None
        self.flags = {name: module.training for name, module in pl_module.named_modules()}
        self.grads = {name: p.grad for name, p in pl_module.named_parameters()}
        self.values = {name: None if g is None else g.clone() for name, g in self.grads.items()}
        self.optimizer = copy.deepcopy(trainer.optimizers[0].state_dict())
        self.rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())


class _Check(Callback):
    def __init__(self, snapshot: _Snapshot) -> None:
        self.snapshot, self.checked = snapshot, 0

    def on_validation_epoch_end(self, trainer, pl_module):
        snap = self.snapshot
        assert {name: module.training for name, module in pl_module.named_modules()} == snap.flags
        for name, parameter in pl_module.named_parameters():
            assert parameter.grad is snap.grads[name], name
            if parameter.grad is not None:
                assert torch.equal(parameter.grad, snap.values[name]), name
        _assert_same(trainer.optimizers[0].state_dict(), snap.optimizer)
        assert torch.equal(torch.get_rng_state(), snap.rng[0])
        assert np.array_equal(np.random.get_state()[1], snap.rng[1]) and random.getstate() == snap.rng[2]
        pl_module.zero_grad(set_to_none=True)
        self.checked += 1


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def test_leaves_flags_gradients_optimizer_and_rng_untouched(tmp_path):
    snapshot = _Snapshot()
    check = _Check(snapshot)
    callback = GradCAMCallback(num_samples=PROBES, log_images=False)
    trainer = make_trainer(tmp_path, [snapshot, callback, check])
    task = make_task()
    trainer.fit(task, *loaders())
    assert check.checked == 1
    assert (tmp_path / "saliency" / "epoch_000" / "maps.npz").exists()
    assert all(not module.training for module in task.teacher.modules())  # the frozen teacher stays in eval


class _ConsumeRandomness(Callback):
    def on_validation_epoch_end(self, trainer, pl_module):
        torch.rand(1)


def _final_weights(tmp_path: Path, callbacks: list) -> dict[str, torch.Tensor]:
    pl.seed_everything(0, verbose=False)
    task = make_task(drop_rate=0.5)  # dropout and shuffling make the run depend on the global RNG
    trainer = make_trainer(tmp_path, callbacks, max_epochs=2, deterministic=True)
    trainer.fit(task, *loaders(shuffle=True))
    return {k: v.clone() for k, v in task.student.state_dict().items()}


def test_seeded_fit_gives_identical_weights_with_and_without_callback(tmp_path):
    without = _final_weights(tmp_path / "off", [])
    with_callback = _final_weights(tmp_path / "on", [GradCAMCallback(num_samples=PROBES, seed=3)])
    assert (tmp_path / "on" / "saliency" / "epoch_001" / "grid.png").exists()
    for key, value in without.items():
        assert torch.equal(value, with_callback[key]), key
    # The comparison is sensitive: one stray draw from the global RNG at the same point changes the weights.
    disturbed = _final_weights(tmp_path / "rng", [_ConsumeRandomness()])
    assert any(not torch.equal(value, disturbed[key]) for key, value in without.items())


def test_validate_runs_in_inference_mode(tmp_path):
    callback = GradCAMCallback(method="gradcam++", num_samples=PROBES, target="ground_truth", layers=-2)
    trainer = make_trainer(tmp_path, [callback], max_epochs=1)
    (results,) = trainer.validate(make_task(), loaders()[1])
    assert trainer.validate_loop.inference_mode
    for key in SALIENCY_KEYS:
        assert math.isfinite(results[f"val/saliency/{key}"])
    data = np.load(tmp_path / "saliency" / "epoch_000" / "maps.npz")
    np.testing.assert_array_equal(data["explained"], data["targets"])
    assert str(data["method"]) == "gradcam++" and str(data["target"]) == "ground_truth"


def test_without_teacher_explains_the_student_only(tmp_path):
    callback = GradCAMCallback(num_samples=PROBES, log_images=False)
    trainer = make_trainer(tmp_path, [callback])
    with pytest.warns(UserWarning, match="no teacher"):
        trainer.fit(make_task(teacher=False), *loaders())
    assert not any(key.startswith("val/saliency") for key in trainer.logged_metrics)
    data = np.load(tmp_path / "saliency" / "epoch_000" / "maps.npz")
    assert data["student_maps"].shape == (PROBES, SIZE, SIZE)
    assert "teacher_maps" not in data and "pearson" not in data
    np.testing.assert_array_equal(data["explained"], data["targets"])  # falls back to the true class
    assert not (tmp_path / "saliency" / "epoch_000" / "grid.png").exists()


class _MaskedQuadrants(Dataset):
    def __init__(self) -> None:
        self.images, self.labels, self.masks = quadrant_data()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "target": self.labels[index], "mask": self.masks[index]}


class PlainDistillation(pl.LightningModule):
    """Not a visiondistill module: just `student` and `teacher` attributes and dict batches."""

    def __init__(self) -> None:
        super().__init__()
        self.student = timm.create_model("test_resnet", num_classes=CLASSES)
        self.teacher = timm.create_model("test_efficientnet", num_classes=CLASSES).requires_grad_(False).eval()

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.student(batch["image"]), batch["target"])

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", F.cross_entropy(self.student(batch["image"]), batch["target"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.student.parameters(), lr=0.01)


def test_plain_lightning_module_with_masks_plays_the_pointing_game(tmp_path):
    callback = GradCAMCallback(num_samples=PROBES, layers=-2, target="student", log_images=False)
    loader = DataLoader(_MaskedQuadrants(), batch_size=8)
    trainer = make_trainer(tmp_path, [callback])
    trainer.fit(PlainDistillation(), loader, loader)
    for role in ("teacher", "student"):
        assert 0.0 <= float(trainer.logged_metrics[f"val/saliency/pointing_game/{role}"]) <= 1.0
    assert "val/saliency/sim" in trainer.logged_metrics
    data = np.load(tmp_path / "saliency" / "epoch_000" / "maps.npz")
    assert data["masks"].shape == (PROBES, SIZE, SIZE) and data["pointing_game_student"].dtype == bool
    np.testing.assert_array_equal(data["explained"], data["student_pred"])


def test_layerwise_mode_logs_every_matched_stage(tmp_path):
    callback = GradCAMCallback(num_samples=PROBES, layerwise=True)
    trainer = make_trainer(tmp_path, [callback])
    trainer.validate(make_task(), loaders()[1])
    assert (tmp_path / "saliency" / "epoch_000" / "layerwise.png").exists()
    stages = [str(-k) for k in range(5, 0, -1)]  # both tiny models declare five stages
    for stage in stages:
        for key in SALIENCY_KEYS:
            assert math.isfinite(float(trainer.logged_metrics[f"val/saliency_layerwise/{stage}/{key}"]))
    data = np.load(tmp_path / "saliency" / "epoch_000" / "maps.npz")
    assert list(data["layerwise_stages"]) == stages
    assert data["layerwise_teacher_maps"].shape == data["layerwise_student_maps"].shape == (5, PROBES, SIZE, SIZE)
    assert data["layerwise_pearson"].shape == (5, PROBES)
    np.testing.assert_array_equal(data["layerwise_student_maps"][-1], data["student_maps"])  # default layer = -1


def test_bad_arguments_fail_early(tmp_path):
    with pytest.raises(ValueError, match="unknown CAM method 'magic'.*gradcam, gradcam\\+\\+"):
        GradCAMCallback(method="magic")
    with pytest.raises(ValueError, match="target"):
        GradCAMCallback(target="oracle")
    with pytest.raises(ValueError, match="top_k"):
        GradCAMCallback(top_k=0)
    with pytest.raises(ValueError, match="num_samples"):
        GradCAMCallback(num_samples=0)
    trainer = make_trainer(tmp_path, [GradCAMCallback(teacher_layers="blocks.9")])
    with pytest.raises(LayerNotFoundError, match="teacher layer 'blocks.9'"):
        trainer.fit(make_task(), *loaders())


class _OtherRank:
    """The part of a Trainer the hook reads, as seen on rank 1 of a DDP run."""

    sanity_checking, state, current_epoch, is_global_zero = False, SimpleNamespace(fn="fit"), 0, False

    def __init__(self, root: Path) -> None:
        self.default_root_dir, self.asked = str(root), 0

    @property
    def log_dir(self) -> str:  # a collective (broadcast) in Lightning: every rank must call it
        self.asked += 1
        return self.default_root_dir


def test_only_global_rank_zero_probes(tmp_path):
    callback = GradCAMCallback(save_dir=tmp_path / "never")
    trainer = _OtherRank(tmp_path)
    callback.on_validation_epoch_end(trainer, pl_module=None)  # would fail on a None module if it probed
    assert trainer.asked == 1 and not (tmp_path / "never").exists()


def test_vit_token_layers_are_reshaped():
    model = timm.create_model("test_vit", num_classes=CLASSES, img_size=32).requires_grad_(False)
    images = torch.randn(2, 3, 32, 32)
    with torch.enable_grad():
        maps = compute_cams(
            cam_method("gradcam"), model, [model.blocks[-1]], images, [lambda out: out[0]] * 2, TokenReshape([64])
        )
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()
    channels_last = torch.randn(2, 3, 3, 64)
    assert TokenReshape([64])(channels_last).shape == (2, 64, 3, 3)


def test_layer_cams_from_one_pass_equal_single_layer_cams():
    model = timm.create_model("test_resnet", num_classes=CLASSES).requires_grad_(False)
    images = quadrant_data(4)[0]
    targets = [lambda out, c=c: out[c] for c in range(4)]
    layers = [model.layer2, model.layer3, model.layer4]
    with torch.enable_grad():
        together = compute_layer_cams(cam_method("gradcam"), model, layers, images, targets)
        alone = [compute_cams(cam_method("gradcam"), model, [layer], images, targets) for layer in layers]
    for a, b in zip(together, alone, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "hirescam"])
def test_backward_stops_at_a_single_target_layer_and_maps_are_unchanged(method):
    model = timm.create_model("test_resnet", num_classes=CLASSES).eval()
    images = quadrant_data(4)[0]
    targets = [ClassifierOutputTarget(c) for c in range(4)]
    with torch.enable_grad():
        maps = compute_cams(cam_method(method), model, [model.layer3], images, targets)
        reached = {name: p.grad is not None for name, p in model.named_parameters()}
        with cam_method(method)(model=model, target_layers=[model.layer3]) as cam:  # grad-cam itself, uncut
            reference = torch.from_numpy(cam(input_tensor=images.clone().requires_grad_(True), targets=targets))
    assert torch.equal(maps, reference.float())
    assert reached["fc.weight"] and reached["layer4.0.conv1.weight"]
    assert not reached["conv1.0.weight"] and not reached["layer3.0.conv1.weight"]  # nothing below the cut


class _Stream(IterableDataset):
    def __iter__(self):
        images, labels, _ = quadrant_data(6)
        return iter(zip(images, labels, strict=True))


def test_probe_batch_is_seeded_and_consumes_no_global_randomness():
    images, labels, _ = quadrant_data()
    loader = DataLoader(TensorDataset(images, labels), batch_size=4, shuffle=True)
    trainer = SimpleNamespace(val_dataloaders=[loader], datamodule=SimpleNamespace(mean=(0.5,) * 3, std=[0.2] * 3))
    state = torch.get_rng_state()
    first, again = draw_probe_batch(trainer, 5, seed=1), draw_probe_batch(trainer, 5, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first.indices, again.indices) and torch.equal(first.images, images[first.indices])
    assert not torch.equal(first.indices, draw_probe_batch(trainer, 5, seed=2).indices)
    assert first.mean == (0.5, 0.5, 0.5) and first.std == (0.2, 0.2, 0.2)

    stream = draw_probe_batch(SimpleNamespace(val_dataloaders=DataLoader(_Stream(), batch_size=4)), 5, seed=0)
    assert stream.images.shape == (5, 3, SIZE, SIZE) and stream.batch[1].shape == (5,)
    assert torch.equal(stream.indices, torch.full((5,), -1))
