"""`visiondistill export CKPT --format onnx`: round trips through onnxruntime and clear messages on bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import pytorch_lightning as pl
import torch

from visiondistill.cli import main
from visiondistill.models import ClassifierSpec
from visiondistill.reporting.export import (
    EXPORTERS,
    ExportError,
    ExportSpec,
    export_onnx,
    load_export_spec,
    register_exporter,
)
from visiondistill.reporting.loader import load_task_module
from visiondistill.tasks import ClassificationTask, SegmentationTask


def trained_checkpoint(task: pl.LightningModule, loader, trainer_kwargs, tmp_path: Path) -> Path:
    trainer = pl.Trainer(**{**trainer_kwargs, "max_steps": 2}, callbacks=[])
    trainer.fit(task, loader)
    path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(path)
    return path


def onnxruntime_outputs(path: Path, images: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": images.numpy()})[0]


def test_classification_student_round_trip(tmp_path, tiny_loader, trainer_kwargs, capsys):
    torch.manual_seed(0)
    task = ClassificationTask(
        student=ClassifierSpec(name="test_resnet"), teacher=ClassifierSpec(name="test_efficientnet"), num_classes=4
    )
    checkpoint = trained_checkpoint(task, tiny_loader, trainer_kwargs, tmp_path)
    assert main(["export", str(checkpoint), "--format", "onnx", "--image-size", "32"]) == 0
    output = checkpoint.with_suffix(".onnx")
    printed = capsys.readouterr().out
    assert str(output) in printed and "max |diff|" in printed
    student = load_task_module(checkpoint).student
    images = torch.rand(5, 3, 32, 32)  # another batch size than the export's example
    with torch.no_grad():
        expected = student(images).numpy()
    np.testing.assert_allclose(onnxruntime_outputs(output, images), expected, rtol=0, atol=1e-4)


def test_segmentation_student_round_trip(tmp_path, small_seg_loader, seg_specs, trainer_kwargs):
    torch.manual_seed(0)
    task = SegmentationTask(student=seg_specs[0], teacher=seg_specs[1], num_classes=3)
    checkpoint = trained_checkpoint(task, small_seg_loader, trainer_kwargs, tmp_path)
    output = tmp_path / "out" / "segmenter.onnx"
    assert main(["export", str(checkpoint), "--output", str(output), "--image-size", "32", "--opset", "17"]) == 0
    student = load_task_module(checkpoint).student
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = student(images).numpy()
    got = onnxruntime_outputs(output, images)
    assert got.shape == (3, 3, 32, 32)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_example_side_is_the_runs_own_without_image_size(tmp_path, small_seg_loader, seg_specs, trainer_kwargs):
    """The segmentation datamodules record no hyperparameters: the side comes from the run's config.yaml."""
    torch.manual_seed(0)
    task = SegmentationTask(student=seg_specs[0], num_classes=3)
    checkpoint = trained_checkpoint(task, small_seg_loader, trainer_kwargs, tmp_path)
    assert "datamodule_hyper_parameters" not in torch.load(checkpoint, weights_only=False)
    assert load_export_spec(checkpoint).example.shape[-1] == 64  # no run folder: the documented default
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    moved = checkpoint.rename(run / "checkpoints" / "best.ckpt")
    (run / "config.yaml").write_text("data:\n  class_path: x.ShapesSegmentation\n  init_args: {image_size: 96}\n")
    assert load_export_spec(moved).example.shape[-2:] == (96, 96)
    assert load_export_spec(moved, image_size=32).example.shape[-2:] == (32, 32)  # the flag wins


def test_task_is_recognised_from_class_path_or_hyperparameters(tmp_path, tiny_loader, trainer_kwargs):
    torch.manual_seed(0)
    task = ClassificationTask(student=ClassifierSpec(name="test_resnet"), num_classes=4)
    checkpoint = trained_checkpoint(task, tiny_loader, trainer_kwargs, tmp_path)
    data = torch.load(checkpoint, weights_only=False)
    assert data["hyper_parameters"]["_class_path"] == "visiondistill.tasks.classification.ClassificationTask"
    assert load_export_spec(checkpoint, image_size=32).task == "classification"
    # A checkpoint written before the task modules recorded their class is recognised by its student spec.
    del data["hyper_parameters"]["_class_path"]
    torch.save(data, tmp_path / "old.ckpt")
    assert load_export_spec(tmp_path / "old.ckpt", image_size=32).task == "classification"
    data["hyper_parameters"]["_class_path"] = "visiondistill.tasks.PoseTask"
    torch.save(data, tmp_path / "pose.ckpt")
    message = r"PoseTask, which has no exporter; exporters exist for: .*ClassificationTask"
    with pytest.raises(ExportError, match=message):
        load_export_spec(tmp_path / "pose.ckpt")


def test_registered_exporter_with_a_structured_output_wrapper(tmp_path):
    """How detection/keypoint tasks plug in: a wrapper returns a tuple of tensors, one output name each."""

    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return {"boxes": y.mean(dim=(2, 3)), "heatmaps": y.sigmoid()}

    class Wrapper(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            out = self.model(x)
            return out["boxes"], out["heatmaps"]

    @register_exporter("ToyTask")
    def toy(path, checkpoint, image_size):
        return ExportSpec(Wrapper(TwoHeads()), torch.rand(1, 3, 16, 16), output_names=["boxes", "heatmaps"], task="toy")

    try:
        torch.save({"hyper_parameters": {"_class_path": "x.ToyTask", "student": {}}}, tmp_path / "toy.ckpt")
        spec = load_export_spec(tmp_path / "toy.ckpt")
        result = export_onnx(spec, tmp_path / "toy.onnx")
        assert result.max_abs_diff <= 1e-4
        session = onnxruntime.InferenceSession(str(tmp_path / "toy.onnx"), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == ["boxes", "heatmaps"]
        with pytest.raises(ExportError, match="not tensors; its exporter must wrap it"):
            export_onnx(ExportSpec(TwoHeads().eval(), torch.rand(1, 3, 16, 16)), tmp_path / "raw.onnx")
    finally:
        del EXPORTERS["ToyTask"]


def test_bad_inputs_give_clear_messages(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing.ckpt")]) == 1
    assert "missing.ckpt' does not exist" in capsys.readouterr().err

    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pt")
    assert main(["export", str(tmp_path / "plain.pt")]) == 1
    assert "is not a visiondistill student checkpoint" in capsys.readouterr().err

    assert main(["export", str(tmp_path / "plain.pt"), "--format", "tflite"]) == 2
    assert "unknown format 'tflite'; supported formats: onnx" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        main(["export"])
    assert "the following arguments are required: checkpoint" in capsys.readouterr().err


class _BatchOfOneBranch(torch.nn.Module):
    """Python control flow on the batch size: tracing bakes in the branch of the example (batch 1), so the ONNX
    graph adds nothing where PyTorch adds 1 to a batch of two: a real export mismatch of exactly 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if x.shape[0] == 1 else y + 1.0


def test_export_whose_onnx_graph_differs_from_pytorch_fails_naming_atol_and_the_difference(tmp_path, capsys):
    spec = ExportSpec(_BatchOfOneBranch(), torch.rand(1, 3, 8, 8))
    (tmp_path / "mismatch.onnx").write_bytes(b"an earlier export")
    with pytest.raises(ExportError, match=r"differ by up to 1 \(> atol 0\.0001\) in .*mismatch\.onnx"):
        export_onnx(spec, tmp_path / "mismatch.onnx")
    assert (tmp_path / "mismatch.onnx").read_bytes() == b"an earlier export"  # a failed export writes nothing
    # The comparison measures the real difference: a tolerance above it lets the same network through.
    assert export_onnx(spec, tmp_path / "tolerated.onnx", atol=1.5).max_abs_diff == pytest.approx(1.0, abs=1e-5)

    register_exporter("MismatchTask")(lambda path, checkpoint, image_size: spec)
    try:
        torch.save({"hyper_parameters": {"_class_path": "x.MismatchTask", "student": {}}}, tmp_path / "m.ckpt")
        assert main(["export", str(tmp_path / "m.ckpt")]) == 1  # the command fails too, with the reason
        assert "differ by up to 1 (> atol 0.0001)" in capsys.readouterr().err
    finally:
        del EXPORTERS["MismatchTask"]
