"""Mixed precision and memory format: every task and every callback of the shipped configs under ``bf16-mixed``.

Each case is a shipped distilled config (teacher checkpoint left out: any weights will do), shrunk by
`tiny_overrides` to one epoch of two 32-px batches, with the callbacks the configs do not use added, and every
explanation callback due in that epoch. Run on the CPU with ``--trainer.precision=bf16-mixed``: every logged loss
term must be finite and the explanation callbacks must have written their maps.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from visiondistill.cli import VisionDistillCLI
from visiondistill.core.callback import full_precision
from visiondistill.distill import AttentionTransfer
from visiondistill.models import ClassifierSpec
from visiondistill.tasks import ClassificationTask

from ..support.cli import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]

#: The config of each case, and the callbacks added to it (those no shipped config uses).
CASES = {
    "classification_kd_saliency": ("classification/shapes_kd_saliency.yaml", []),
    "classification_dkd_hint": ("classification/shapes_dkd.yaml", []),
    "segmentation": (
        "segmentation/shapes_distilled.yaml",
        [
            {"class_path": "visiondistill.distill.PixelwiseDistillation"},
            {"class_path": "visiondistill.distill.PairwiseSimilarity", "init_args": {"pool_size": 4}},
            {
                "class_path": "visiondistill.distill.ChannelWiseDistillation",
                "init_args": {"source": "features", "student_layer": -1, "teacher_layer": -1, "name": "cwd_features"},
            },
        ],
    ),
    "detection": (
        "detection/shapes_distilled.yaml",
        [{"class_path": "visiondistill.distill.FeatureImitation", "init_args": {"weight": 1.0e-5}}],
    ),
    "keypoints": ("keypoints/shapes_distilled.yaml", []),
}
#: Cases over ~10 s on two CPU cores.
SLOW = {"classification_kd_saliency", "detection"}


def bf16_config(tmp_path: Path, config: str, added: list[dict]) -> Path:
    """The shipped config with an untrained teacher, the added callbacks and every probe due in the first epoch."""
    data = yaml.safe_load((ROOT / "configs" / config).read_text())
    teacher = data["model"]["init_args"]["teacher"]
    data["model"]["init_args"]["teacher"] = {k: v for k, v in teacher.items() if k != "checkpoint"}
    for callback in data["trainer"]["callbacks"]:
        if callback["class_path"].startswith("visiondistill.explain."):
            callback["init_args"].update(every_n_epochs=1, num_samples=4)
    data["trainer"]["callbacks"] += added
    path = tmp_path / "bf16.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "case", [pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else []) for name in CASES]
)
def test_every_task_and_callback_trains_in_bf16_mixed(case: str, tmp_path: Path):
    config, added = CASES[case]
    args = ["fit", "--config", str(bf16_config(tmp_path, config, added)), *tiny_overrides(tmp_path, case)]
    cli = VisionDistillCLI(args=[*args, "--trainer.precision=bf16-mixed"])
    trainer = cli.trainer
    assert trainer.precision == "bf16-mixed"
    losses = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    terms = [k for k in losses if k.startswith("train/distill/")]
    expected = [cb for cb in trainer.callbacks if type(cb).__module__.startswith("visiondistill.distill.")]
    assert len(terms) >= len([cb for cb in expected if hasattr(cb, "compute_loss")]), losses
    assert "train/loss" in losses and all(math.isfinite(v) for v in losses.values()), losses
    log_dir = Path(trainer.log_dir)
    maps = sorted(p.relative_to(log_dir).as_posix() for p in log_dir.rglob("maps.npz"))
    probes = [cb for cb in trainer.callbacks if type(cb).__module__.startswith("visiondistill.explain.")]
    assert len(maps) == len(probes), maps


class _DtypeSpy(AttentionTransfer):
    """Attention transfer that notes the dtypes its term is computed from, and whether autocast is on meanwhile."""

    def __init__(self) -> None:
        super().__init__(student_layers=[-1], teacher_layers=[-1])
        self.seen: list[dict] = []

    def compute_loss(self, pl_module, batch, student_out, teacher_out):
        ((s, t),) = self.recorded_pairs()
        self.seen.append(
            {
                "recorded": self._student_recorder[-1].dtype,  # what the student's forward produced
                "outputs": {student_out.dtype, teacher_out.dtype},
                "features": {s.dtype, t.dtype},
                "autocast": torch.is_autocast_enabled("cpu"),
            }
        )
        return super().compute_loss(pl_module, batch, student_out, teacher_out)


class _TaskLossSpy(ClassificationTask):
    def task_loss(self, student_out, batch):
        self.task_loss_dtype = student_out.dtype
        return super().task_loss(student_out, batch)


def test_distillation_terms_and_task_loss_are_computed_in_float32_under_bf16(tmp_path: Path):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    spec = ClassifierSpec(name="test_resnet")
    task = _TaskLossSpy(student=spec, teacher=spec, num_classes=4)
    spy = _DtypeSpy()
    loader = DataLoader(TensorDataset(torch.randn(8, 3, 32, 32), torch.arange(8) % 4), batch_size=4)
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        precision="bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[spy],
    )
    trainer.fit(task, loader)
    assert len(spy.seen) == 2
    for seen in spy.seen:
        assert seen["recorded"] == torch.bfloat16  # autocast really ran the networks in bf16 …
        assert seen["outputs"] == seen["features"] == {torch.float32}  # … and the term got float32 inputs
        assert seen["autocast"] is False  # and ran without autocast (matmuls stay float32 too)
    assert task.task_loss_dtype == torch.float32
    assert torch.isfinite(trainer.callback_metrics["train/distill/attention_transfer"])


def test_full_precision_casts_floating_tensors_in_any_structure():
    half = torch.ones(2, dtype=torch.bfloat16)
    value = {"a": [half, (half, torch.arange(3))], "b": None}
    cast = full_precision(value)
    assert cast["a"][0].dtype == torch.float32 and cast["a"][1][0].dtype == torch.float32
    assert cast["a"][1][1].dtype == torch.int64 and cast["b"] is None
    single = torch.ones(2)
    assert full_precision(single) is single  # fp32 costs nothing


@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_last_puts_networks_and_inputs_in_that_layout(channels_last: bool, tmp_path: Path):
    from torch.utils.data import DataLoader, TensorDataset

    task = ClassificationTask(
        student=ClassifierSpec(name="test_resnet"),
        teacher=ClassifierSpec(name="test_resnet"),
        num_classes=4,
        channels_last=channels_last,
    )
    seen: list[bool] = []

    def record(module, args):
        seen.append(args[0].is_contiguous(memory_format=torch.channels_last))

    task.student.register_forward_pre_hook(record)
    task.teacher.register_forward_pre_hook(record)
    loader = DataLoader(TensorDataset(torch.randn(8, 3, 32, 32), torch.arange(8) % 4), batch_size=4)
    trainer_args = {"max_epochs": 1, "limit_train_batches": 1, "logger": False, "enable_checkpointing": False}
    import pytorch_lightning as pl

    pl.Trainer(default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False, **trainer_args).fit(
        task, loader
    )
    for network in (task.student, task.teacher):
        conv = next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) is channels_last
    assert seen and all(flag is channels_last for flag in seen), seen


def test_grad_cam_asked_for_under_bf16_autocast_is_computed_in_float32():
    import timm
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from visiondistill.explain.cam import cam_method, compute_cams, compute_layer_cams

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=4).eval()
    images, targets = torch.randn(2, 3, 32, 32), [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    layers = [model.layer3, model.layer4] if hasattr(model, "layer4") else list(model.children())[-4:-2]
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.enable_grad():
        maps = compute_cams(cam_method("gradcam"), model, layers[-1:], images, targets)
        per_layer = compute_layer_cams(cam_method("gradcam"), model, layers, images, targets)
    with torch.enable_grad():
        reference = compute_cams(cam_method("gradcam"), model, layers[-1:], images, targets)
    assert maps.dtype == torch.float32 and maps.shape == (2, 32, 32)
    torch.testing.assert_close(maps, reference)  # the very same float32 computation
    assert len(per_layer) == 2 and all(torch.isfinite(m).all() for m in per_layer)
