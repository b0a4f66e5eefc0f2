"""Exporting a trained student for the edge: ``visiondistill export CKPT --format onnx``.

The student is rebuilt from its checkpoint alone (no config, no teacher), exported with ``torch.onnx.export``
(the TorchScript-based exporter, ``dynamo=False``: it needs nothing beyond torch and onnx, and every student here
traces), checked with ``onnx.checker`` and run in onnxruntime on the example input and on a batch of two random
images; the largest absolute difference from PyTorch's outputs is printed and must stay within ``--atol``.

Tasks plug in through `register_exporter`: a function that takes the checkpoint's path and its loaded contents
and returns an `ExportSpec` (the network to export, an example input, input/output names). The exporter is chosen
by the task module class the checkpoint records (`visiondistill.reporting.loader.recorded_class_path`), or by the
nearest registered base class of it; the built-in exporters rebuild the student with the one loader,
`visiondistill.reporting.loader.load_task_module`. A network whose forward returns a structured output (a
detector's list of dicts, a keypoint head's dataclass) must be wrapped by its exporter in a thin ``nn.Module`` whose
forward returns a tensor or a tuple of tensors (one ``output_names`` entry each); the batch axis of each is declared
dynamic.

Example::

    visiondistill export runs/classification/student_kd/checkpoints/best.ckpt --format onnx
    visiondistill export runs/segmentation/student/checkpoints/last.ckpt --output student.onnx --image-size 128
    visiondistill export runs/classification/student_kd/checkpoints/best.ckpt --quantize int8  # + best.int8.onnx

``--quantize int8`` (`visiondistill.reporting.quantize`) also writes a statically quantized INT8 model and measures
fp32 and INT8 (accuracy on the run's test split, batch-1 latency in onnxruntime) next to the teacher's fp32.
"""

from __future__ import annotations

import argparse
import io
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from visiondistill.core.errors import VisionDistillError
from visiondistill.models.checkpoints import CheckpointError, read_checkpoint
from visiondistill.reporting.loader import import_task_class, load_task_module, recorded_class_path, run_data_settings

__all__ = ["EXPORTERS", "ExportError", "ExportResult", "ExportSpec", "export_onnx", "load_export_spec", "main"]

FORMATS = ("onnx",)
DEFAULT_IMAGE_SIZE = 64


class ExportError(VisionDistillError, ValueError):
    """An export that cannot be done or whose result does not match PyTorch."""


@dataclass
class ExportSpec:
    """What to export for one checkpoint.

    Attributes:
        model: The network in eval mode; its forward takes ``example`` and returns a tensor or a tuple of tensors.
        example: An example input ``1×C×H×W``; its H×W are fixed in the exported graph, the batch axis is dynamic.
        input_names: Names of the graph's inputs.
        output_names: Names of the graph's outputs, one per returned tensor.
        task: Task name, for messages.
    """

    model: nn.Module
    example: Tensor
    input_names: list[str] = field(default_factory=lambda: ["image"])
    output_names: list[str] = field(default_factory=lambda: ["logits"])
    task: str = ""


Exporter = Callable[[Path, Mapping[str, Any], int | None], ExportSpec]

#: Exporters by task-module class name (the last part of ``_class_path``).
EXPORTERS: dict[str, Exporter] = {}


def register_exporter(task_class: str) -> Callable[[Exporter], Exporter]:
    """Function decorator that registers the exporter of one task module (and of its subclasses).

    Args:
        task_class: The task module's class name (``"ClassificationTask"``), matched against the class the
            checkpoint records (``hyper_parameters["_class_path"]``) and that class's bases.

    Returns:
        The decorator. The exporter is called as ``exporter(path, checkpoint, image_size)`` (``image_size`` is
        ``None`` when not given) and returns an `ExportSpec`.
    """

    def register(exporter: Exporter) -> Exporter:
        EXPORTERS[task_class] = exporter
        return exporter

    return register


def _image_size(path: Path, checkpoint: Mapping[str, Any], image_size: int | None, key: str = "image_size") -> int:
    """``--image-size``, else the side the run trained on (its checkpoint's or its ``config.yaml``'s), else 64."""
    if image_size is not None:
        if image_size < 8:
            raise ExportError(f"--image-size must be >= 8, got {image_size}")
        return int(image_size)
    data, _ = run_data_settings(path, checkpoint)
    size = data.get(key)
    return int(size) if isinstance(size, int) and not isinstance(size, bool) else DEFAULT_IMAGE_SIZE


def _input_channels(hparams: Mapping[str, Any]) -> int:
    student = hparams["student"]
    # `in_chans` is the spelling of checkpoints written before the specs all said `in_channels`.
    return int(student.get("in_channels", student.get("in_chans", 3)))


@register_exporter("ClassificationTask")
def _classification(path: Path, checkpoint: Mapping[str, Any], image_size: int | None) -> ExportSpec:
    module = load_task_module(path)
    model, hparams = module.student, module.hparams
    channels = _input_channels(hparams)
    size = _image_size(path, checkpoint, image_size)
    return ExportSpec(model, torch.rand(1, channels, size, size), task="classification")


@register_exporter("SegmentationTask")
def _segmentation(path: Path, checkpoint: Mapping[str, Any], image_size: int | None) -> ExportSpec:
    module = load_task_module(path)
    model, hparams = module.student, module.hparams
    channels = _input_channels(hparams)
    size = _image_size(path, checkpoint, image_size)
    if size % 32:
        raise ExportError(f"segmenters need an image size divisible by 32 (encoder depth 5), got {size}")
    return ExportSpec(model, torch.rand(1, channels, size, size), task="segmentation")


@register_exporter("KeypointTask")
def _keypoints(path: Path, checkpoint: Mapping[str, Any], image_size: int | None) -> ExportSpec:
    module = load_task_module(path)
    model, hparams = module.student, module.hparams
    channels = _input_channels(hparams)
    size = _image_size(path, checkpoint, image_size, key="input_size")  # the crop side the model was trained on
    return ExportSpec(model, torch.rand(1, channels, size, size), output_names=["heatmaps"], task="keypoints")


class _DetectorForExport(nn.Module):
    """A detector's dense predictions as tensors: decoded boxes and FCOS scores of every location.

    ``boxes`` is ``N×A×4`` (xyxy pixels) and ``scores`` ``N×A×K`` = ``sqrt(sigmoid(class) · sigmoid(centre-ness))``,
    torchvision FCOS's score; score thresholding, top-k and NMS are left to the runtime (they are cheap there and
    keep the graph free of data-dependent shapes).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        output = self.detector(images)
        scores = torch.sqrt(torch.sigmoid(output.cls_logits) * torch.sigmoid(output.bbox_ctrness))
        return self.detector.decode_boxes(output), scores


@register_exporter("DetectionTask")
def _detection(path: Path, checkpoint: Mapping[str, Any], image_size: int | None) -> ExportSpec:
    module = load_task_module(path)
    model, hparams = module.student, module.hparams
    channels = _input_channels(hparams)
    size = _image_size(path, checkpoint, image_size)
    wrapper = _DetectorForExport(model).eval()
    return ExportSpec(wrapper, torch.rand(1, channels, size, size), output_names=["boxes", "scores"], task="detection")


class _MultiTaskForExport(nn.Module):
    """A multi-task student's heads as a tuple of tensors (``cls`` logits ``N×C``, ``seg`` logits ``N×K×H×W``)."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        output = self.student(images)
        return output["cls"], output["seg"]


@register_exporter("MultiTaskModule")
def _multitask(path: Path, checkpoint: Mapping[str, Any], image_size: int | None) -> ExportSpec:
    module = load_task_module(path)
    channels = _input_channels(module.hparams)
    size = _image_size(path, checkpoint, image_size)
    wrapper = _MultiTaskForExport(module.student).eval()
    return ExportSpec(wrapper, torch.rand(1, channels, size, size), output_names=["cls", "seg"], task="multitask")


def load_export_spec(checkpoint_path: str | Path, image_size: int | None = None) -> ExportSpec:
    """Rebuilds the student of a visiondistill checkpoint and an example input, dispatching on the task.

    Args:
        checkpoint_path: A ``.ckpt`` written by a visiondistill run.
        image_size: Side of the example input; default the run's ``data.image_size`` (its checkpoint's, else its
            ``config.yaml``'s), else 64.

    Returns:
        The export spec.

    Raises:
        CheckpointError: When the file is missing or unreadable, or is not a visiondistill student checkpoint.
        ExportError: When its task has no exporter.
    """
    path = Path(checkpoint_path).expanduser()
    checkpoint = read_checkpoint(path)
    class_path = recorded_class_path(checkpoint, path)
    try:
        names = [cls.__name__ for cls in import_task_class(class_path, path).__mro__]
    except CheckpointError:
        names = [class_path.rsplit(".", 1)[-1]]  # an exporter may serve a task module not installed here
    task_class = next((name for name in names if name in EXPORTERS), None)
    if task_class is None:
        known = ", ".join(sorted(EXPORTERS))
        raise ExportError(
            f"{str(path)!r} was written by {class_path}, which has no exporter; "
            f"exporters exist for: {known} (see visiondistill.reporting.export.register_exporter)"
        )
    spec = EXPORTERS[task_class](path, checkpoint, image_size)
    spec.model.eval()
    return spec


@dataclass
class ExportResult:
    """Where the model went and how closely onnxruntime reproduces PyTorch."""

    path: Path
    max_abs_diff: float
    input_shape: tuple[int, ...]
    opset: int


def _as_tuple(output: object) -> tuple[Tensor, ...]:
    if isinstance(output, Tensor):
        return (output,)
    if isinstance(output, list | tuple) and all(isinstance(item, Tensor) for item in output):
        return tuple(output)
    raise ExportError(
        f"the network returns {type(output).__name__}, not tensors; its exporter must wrap it in a module whose "
        "forward returns a tensor or a tuple of tensors"
    )


def export_onnx(spec: ExportSpec, output: str | Path, opset: int = 17, atol: float = 1e-4) -> ExportResult:
    """Exports a network to ONNX, checks the file, and compares onnxruntime's outputs with PyTorch's.

    Args:
        spec: What to export (`load_export_spec`).
        output: The ``.onnx`` file to write (folders are created).
        opset: ONNX opset version.
        atol: Largest absolute difference accepted between onnxruntime and PyTorch outputs.

    Returns:
        The result, with the largest absolute difference over the example and a random batch of two.

    Raises:
        ExportError: When the outputs differ by more than ``atol`` or are not tensors; ``output`` is then not written.
    """
    import onnx
    import onnxruntime

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    model, example = spec.model.eval(), spec.example
    with torch.no_grad():
        reference_example = _as_tuple(model(example))
    if len(reference_example) != len(spec.output_names):
        raise ExportError(
            f"the network returns {len(reference_example)} tensors but {len(spec.output_names)} output names were "
            f"given ({spec.output_names})"
        )
    dynamic_axes = {name: {0: "batch"} for name in [*spec.input_names, *spec.output_names]}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)

    # The model is checked from memory and written only when it matches PyTorch: a failed export leaves no file that
    # looks usable, and never replaces a good one already at ``output``.
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand((2, *example.shape[1:]), generator=generator)
    worst = 0.0
    for inputs in (example, batch):
        with torch.no_grad():
            expected = _as_tuple(model(inputs))
        got = session.run(None, {spec.input_names[0]: inputs.numpy()})
        for name, want, have in zip(spec.output_names, expected, got, strict=True):
            if tuple(have.shape) != tuple(want.shape):
                raise ExportError(f"output {name!r}: onnxruntime gives {have.shape}, PyTorch {tuple(want.shape)}")
            worst = max(worst, float(np.max(np.abs(have - want.numpy()))) if want.numel() else 0.0)
    if not worst <= atol:
        raise ExportError(
            f"onnxruntime and PyTorch outputs differ by up to {worst:.3g} (> atol {atol:g}) in {output}; "
            "nothing was written"
        )
    output.write_bytes(buffer.getvalue())
    return ExportResult(output, worst, tuple(example.shape), opset)


def build_parser() -> argparse.ArgumentParser:
    """The ``visiondistill export`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="visiondistill export", description="Export the student of a visiondistill checkpoint for the edge."
    )
    parser.add_argument("checkpoint", help="a .ckpt written by `visiondistill fit`")
    parser.add_argument("--format", default="onnx", help=f"export format (supported: {', '.join(FORMATS)})")
    parser.add_argument("--output", help="output file (default: the checkpoint's path with the format's suffix)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    parser.add_argument("--image-size", type=int, help="side of the example input (default: the run's image size)")
    parser.add_argument("--atol", type=float, default=1e-4, help="accepted |onnxruntime − torch| (default 1e-4)")
    return parser


#: A step of `main` around the export: ``hook(args, spec, output)``; it raises a `VisionDistillError` to refuse.
Hook = Callable[[argparse.Namespace, ExportSpec, Path], None]


def main(
    argv: Sequence[str] | None = None,
    parser: argparse.ArgumentParser | None = None,
    before: Hook | None = None,
    after: Hook | None = None,
) -> int:
    """Entry point of ``visiondistill export``; prints the output file and the onnxruntime/PyTorch difference.

    Args:
        argv: The command's arguments.
        parser: The parser (default `build_parser`); a caller that adds options passes its own.
        before: Called once the student is rebuilt, before anything is written (a check that refuses early).
        after: Called once the ONNX file is written (``--quantize``: `visiondistill.reporting.quantize.main`).

    Returns:
        0 on success, 1 when the export fails (the reason is printed to stderr), 2 on bad arguments.
    """
    import sys

    args = (parser or build_parser()).parse_args(argv)
    fmt = str(args.format).lower()
    if fmt not in FORMATS:
        print(
            f"visiondistill export: unknown format {args.format!r}; supported formats: {', '.join(FORMATS)}",
            file=sys.stderr,
        )
        return 2
    try:
        spec = load_export_spec(args.checkpoint, image_size=args.image_size)
        output = Path(args.output) if args.output else Path(args.checkpoint).with_suffix(f".{fmt}")
        if before is not None:
            before(args, spec, output)
        result = export_onnx(spec, output, opset=args.opset, atol=args.atol)
        shape = "×".join(str(d) for d in result.input_shape)
        print(
            f"exported the {spec.task} student to {result.path} (ONNX opset {result.opset}, input {shape}, dynamic "
            f"batch); onnxruntime vs PyTorch max |diff| = {result.max_abs_diff:.3g}"
        )
        if after is not None:
            after(args, spec, output)
    except VisionDistillError as error:  # CheckpointError, ExportError, and a hook's RunError
        print(f"visiondistill export: {error}", file=sys.stderr)
        return 1
    return 0
