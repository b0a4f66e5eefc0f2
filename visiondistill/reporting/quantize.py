"""INT8 for the edge: ``visiondistill export CKPT --quantize int8``.

The fp32 ONNX file that `visiondistill.reporting.export.export_onnx` wrote is quantized with onnxruntime's static
quantization (``quantize_static``, QDQ format, per-channel INT8 weights, UINT8 activations) after
``quant_pre_process`` (shape inference and graph optimisation), calibrated on ``calibration_images`` training
images of the run's own datamodule, rebuilt from the run's ``config.yaml`` (a seeded draw, read without
augmentation: `SplitFolderDataModule.calibration_dataloader`). Both files are then measured in onnxruntime on the
CPU (``CPUExecutionProvider``):

- the task's own test metrics on the run's test split: the task module rebuilt from the checkpoint runs Lightning's
  test loop with its student replaced by the onnxruntime session (`OnnxStudent`), so the metric code is the task's;
- batch-1 latency: the median of ``latency_runs`` runs after a warm-up, with ``threads`` intra-op threads;
- INT8 against fp32 on the test images: the share of predictions that agree (the class of an image or of each
  pixel, the peak of each keypoint heatmap, or the detections: `quantize_tasks.agreement_counts`), and the relative
  error ``‖int8 − fp32‖ / ‖fp32‖`` of the raw outputs (the largest over a graph's outputs).

When the run distilled from a teacher checkpoint, the teacher is exported to fp32 ONNX and measured the same way.
The summary is printed and written next to the ONNX file as ``<name>.quantization.json`` and ``.md``.

A multi-task student (`visiondistill.tasks.MultiTaskModule`, docs/multitask.md) is exported with one output per head
(``cls``, ``seg``); its test loop reads them by name (`OnnxStudent` with ``heads``), so the metrics are its own,
per head (``test/cls/acc_top1``, ``test/seg/miou`` …). Agreement and relative error are given per head
(`QuantizationSummary.heads`), and each head's teacher (one per head, from the run's recorded ``teachers``) is
exported and scored on its head's metric (`MultiTaskModule.score_heads`, as the report's multi-task section does).

Every task's student is supported (`visiondistill.reporting.quantize_tasks` holds what differs by task):
classification, segmentation and keypoint networks return one tensor that the task's test loop takes from
onnxruntime, the multi-task network one per head; a detector's exported boxes and scores are post-processed
outside the graph (score threshold, top-k, NMS) and scored with the task's mAP, and its box decoding and score
fusion are left in fp32 (``nodes_to_exclude``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from visiondistill.core.errors import VisionDistillError
from visiondistill.core.protocol import batch_inputs
from visiondistill.core.teachers import parse_teacher_entries
from visiondistill.models.checkpoints import read_checkpoint
from visiondistill.reporting.export import ExportError, ExportSpec, export_onnx, load_export_spec
from visiondistill.reporting.export import build_parser as export_parser
from visiondistill.reporting.export import main as export_main
from visiondistill.reporting.loader import load_task_module
from visiondistill.reporting.measure import metric_levels, test_metrics
from visiondistill.reporting.quantize_tasks import EXCLUDED_WHY, agreement_counts, detection_metrics, nodes_to_exclude
from visiondistill.reporting.runs import build_datamodule, read_run
from visiondistill.tasks.detection import DetectionTask

__all__ = [
    "QUANTIZABLE_TASKS",
    "QUANTIZE_MODES",
    "OnnxStudent",
    "QuantizationSummary",
    "Variant",
    "build_parser",
    "calibration_batches",
    "check_image_size",
    "check_quantizable",
    "head_figures",
    "headline_keys",
    "model_rows",
    "run_datamodule",
    "quantize_int8",
    "main",
    "quantize_export",
]

QUANTIZE_MODES = ("int8",)
QUANTIZABLE_TASKS = ("classification", "segmentation", "detection", "keypoints", "multitask")
DEFAULT_CALIBRATION_IMAGES = 256


class OnnxStudent(nn.Module):
    """An onnxruntime session in place of a task module's student: ``forward(images)`` returns its first output.

    Given ``heads`` (a multi-task student's: ``cls``, ``seg``), it returns ``{head: the graph's output of that
    name}``, as the multi-task network returns its heads.

    Raises:
        ExportError: When the graph has no output named after one of ``heads``.
    """

    def __init__(self, session: Any, heads: Sequence[str] = ()) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.heads = list(heads)
        outputs = [output.name for output in session.get_outputs()]
        if not set(self.heads) <= set(outputs):
            raise ExportError(
                f"the ONNX graph's outputs are {outputs} but the student's heads are {self.heads}; export the "
                "multi-task student with `visiondistill export` (one output per head)"
            )

    def forward(self, images: Tensor) -> Tensor | dict[str, Tensor]:  # noqa: D102
        array = images.detach().cpu().numpy().astype(np.float32)
        outputs = [torch.from_numpy(out) for out in self.session.run(self.heads or None, {self.input_name: array})]
        return dict(zip(self.heads, outputs, strict=True)) if self.heads else outputs[0]


@dataclass
class Variant:
    """One ONNX file as measured: ``metrics`` (the task's ``test/*``), batch-1 ``latency_ms``, ``size_mb``."""

    path: str
    metrics: dict[str, float]
    latency_ms: float
    size_mb: float


@dataclass
class QuantizationSummary:
    """fp32 and INT8 students (and the teacher's fp32, when measured) and how far INT8 is from fp32."""

    task: str
    calibration_images: int
    threads: int
    latency_runs: int
    fp32: Variant
    int8: Variant
    agreement: float
    relative_error: float
    teacher: Variant | None = None
    excluded_nodes: int = 0
    notes: list[str] = field(default_factory=list)
    #: A multi-task student's heads: INT8 against fp32 per head, ``{head: {"agreement", "relative_error"}}``;
    #: ``agreement`` and ``relative_error`` are then the lowest and the highest of the heads'.
    heads: dict[str, dict[str, float]] = field(default_factory=dict)
    #: A multi-task student's teachers in fp32, by id, each scored on its head's metric (``teacher_heads``: id -> head).
    teachers: dict[str, Variant] = field(default_factory=dict)
    teacher_heads: dict[str, str] = field(default_factory=dict)

    def table(self) -> str:
        """The summary as a Markdown table, one row per model."""
        summary = asdict(self)
        rows, keys = model_rows(summary), headline_keys(summary)
        lines = [
            "| model | " + " | ".join(keys) + " | latency (ms, batch 1) | size (MB) |",
            "|---|" + "---|" * len(keys) + "---|---|",
        ]
        for label, variant in rows:
            metrics = variant["metrics"]
            values = " | ".join(f"{metrics[k]:.4f}" if k in metrics else "–" for k in keys)
            lines.append(f"| {label} | {values} | {variant['latency_ms']:.3f} | {variant['size_mb']:.3f} |")
        lines.append("")
        lines.append(
            f"INT8 vs fp32 on the test images: prediction agreement {self.agreement:.4f}, relative error "
            f"{self.relative_error:.4f}{head_figures(summary)}; {self.calibration_images} calibration images; "
            f"onnxruntime CPUExecutionProvider, {self.threads} thread(s), median of {self.latency_runs} runs."
        )
        lines += [f"Note: {note}" for note in self.notes]
        return "\n".join(lines)


def model_rows(summary: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The measured models of a summary (`QuantizationSummary` as written to JSON), with their table labels.

    The fp32 and INT8 student, the teacher (``teacher fp32``) and, for a multi-task student, each head's teacher
    (``teacher fp32: <id> (<head> head)``).
    """
    rows = [("student fp32", summary["fp32"]), ("student INT8", summary["int8"])]
    rows += [("teacher fp32", summary["teacher"])] if summary.get("teacher") else []
    heads = summary.get("teacher_heads") or {}
    for tid, variant in (summary.get("teachers") or {}).items():
        rows.append((f"teacher fp32: {tid} ({heads.get(tid, '?')} head)", variant))
    return rows


def headline_keys(summary: Mapping[str, Any]) -> list[str]:
    """The headline metrics of a summary's models, e.g. ``test/acc_top1``, or ``test/cls/acc_top1`` per head.

    Per-class metrics and losses stay in the JSON.
    """
    heads = tuple(summary.get("heads") or ())
    metrics = [key for _, variant in model_rows(summary) for key in variant["metrics"]]
    return sorted({key for key in metrics if metric_levels(key, heads) == 1 and not key.endswith("loss")})


def head_figures(summary: Mapping[str, Any]) -> str:
    """INT8 against fp32 per head of a multi-task summary, as a clause (``" (cls head: agreement …)"``); else ``""``."""
    heads = summary.get("heads") or {}
    figures = [
        f"{head} head: agreement {values['agreement']:.4f}, relative error {values['relative_error']:.4f}"
        for head, values in heads.items()
    ]
    return f" (the lowest and highest of the heads'; {'; '.join(figures)})" if figures else ""


def _session(path: str | Path, threads: int = 1) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _latency_ms(session: Any, shape: tuple[int, ...], runs: int, warmup: int = 5) -> float:
    name = session.get_inputs()[0].name
    image = np.random.default_rng(0).random((1, *shape[1:]), dtype=np.float32)
    for _ in range(warmup):
        session.run(None, {name: image})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {name: image})
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def calibration_batches(datamodule: Any, count: int) -> list[np.ndarray]:
    """``count`` training images of a datamodule, as float32 arrays by batch.

    A datamodule with a ``calibration_dataloader`` (every split-folder datamodule: a seeded draw, unaugmented) gives
    the same images on every export; any other datamodule gives the first ``count`` images of its
    ``train_dataloader``, augmented and shuffled as it trains.

    Raises:
        ExportError: When ``count`` is below 1 or the training split has no images.
    """
    if not isinstance(count, int) or count < 1:
        raise ExportError(f"--calibration-images must be a whole number >= 1, got {count!r}")
    datamodule.prepare_data()
    if hasattr(datamodule, "calibration_dataloader"):
        loader = datamodule.calibration_dataloader(count)
    else:
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
    batches, seen = [], 0
    for batch in loader:
        images = batch_inputs(batch)[: count - seen]
        batches.append(images.detach().cpu().numpy().astype(np.float32))
        seen += images.shape[0]
        if seen >= count:
            break
    if not seen:
        raise ExportError("the run's training split has no images to calibrate the INT8 model on")
    return batches


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, batches: list[np.ndarray], task: str = "") -> int:
    """Static INT8 quantization (QDQ, per-channel weights) of an ONNX file, calibrated on ``batches``.

    Returns:
        How many nodes were left in fp32 (`quantize_tasks.nodes_to_exclude` of ``task``).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, input_name: str) -> None:
            self.items = iter([{input_name: batch} for batch in batches])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    int8_path = Path(int8_path)
    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
            excluded = nodes_to_exclude(task, prepared)
            quantize_static(
                str(prepared),
                str(int8_path),
                Reader(_session(prepared).get_inputs()[0].name),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                nodes_to_exclude=excluded,
            )
    return len(excluded)


def _measure(module: Any, path: Path, datamodule: Any, shape: tuple[int, ...], threads: int, runs: int) -> Variant:
    session = _session(path, threads)
    student = module.student
    if isinstance(module, DetectionTask):  # its test loop needs the network's structured outputs
        metrics = detection_metrics(session, student, datamodule, module.class_names)
    else:
        module.student = OnnxStudent(session, getattr(module, "heads", ()))  # a multi-task module reads its heads
        try:
            metrics = test_metrics(module, datamodule)
        finally:
            module.student = student
    return _variant(path, session, metrics, shape, runs)


def _variant(path: Path, session: Any, metrics: dict[str, float], shape: tuple[int, ...], runs: int) -> Variant:
    """A measured file: its metrics, its batch-1 latency in ``session`` and its size."""
    return Variant(str(path), metrics, _latency_ms(session, shape, runs), path.stat().st_size / 1e6)


def _compare(
    fp32: Path, int8: Path, datamodule: Any, task: str = "", detector: Any = None
) -> tuple[list[float], list[float]]:
    """Prediction agreement and relative error of INT8 against fp32 outputs over the test split.

    Returns:
        The agreements of `quantize_tasks.agreement_counts`'s counts (one for most tasks; for detection one per
        direction, 1 when neither model detects anything; for the multi-task student one per head) and the
        relative error of each graph output, in the graph's order.
    """
    first, second = _session(fp32), _session(int8)
    name = first.get_inputs()[0].name
    agree, total, images_seen = np.zeros(1), np.zeros(1), 0
    squared_diff = np.zeros(len(first.get_outputs()))
    squared_ref = np.zeros(len(first.get_outputs()))
    datamodule.setup("test")
    for batch in datamodule.test_dataloader():
        images = batch_inputs(batch).numpy().astype(np.float32)
        want, got = first.run(None, {name: images}), second.run(None, {name: images})
        agreeing, count = agreement_counts(task, want, got, detector, tuple(images.shape[-2:]))
        agree, total = agree + agreeing, total + count
        squared_diff += [float(np.sum((b - a) ** 2)) for a, b in zip(want, got, strict=True)]
        squared_ref += [float(np.sum(a**2)) for a in want]
        images_seen += images.shape[0]
    if not images_seen:
        raise ExportError("the run's test split has no images to measure the INT8 model on")
    agreements = [1.0 if t == 0 and a == 0 else float(a / max(t, 1)) for a, t in zip(agree, total, strict=True)]
    return agreements, np.sqrt(squared_diff / np.maximum(squared_ref, 1e-12)).tolist()


def _teacher_checkpoint(hparams: Mapping[str, Any]) -> Path | None:
    teacher = hparams.get("teacher")
    checkpoint = teacher.get("checkpoint") if isinstance(teacher, Mapping) else None
    return Path(checkpoint) if checkpoint else None


def check_quantizable(spec: ExportSpec) -> None:
    """Raises `ExportError` when the spec's task has no INT8 measurement (a task not in `QUANTIZABLE_TASKS`)."""
    if spec.task not in QUANTIZABLE_TASKS:
        raise ExportError(
            f"--quantize int8 supports {', '.join(QUANTIZABLE_TASKS)} students, not {spec.task or 'this task'} "
            "(no test loop on its exported tensors yet); export it in fp32 without --quantize"
        )


def check_image_size(spec: ExportSpec, batches: list[np.ndarray]) -> None:
    """Raises `ExportError` when the run's images are not the size the model was exported for."""
    if tuple(batches[0].shape[1:]) != tuple(spec.example.shape[1:]):
        got, want = "×".join(map(str, batches[0].shape[1:])), "×".join(map(str, spec.example.shape[1:]))
        raise ExportError(
            f"the run's images are {got} (C×H×W) but the model was exported for {want}; export it at the run's "
            f"image size (--image-size {batches[0].shape[-1]})"
        )


def run_datamodule(checkpoint_path: str | Path) -> Any:
    """The datamodule of the run that wrote a checkpoint (``<run>/checkpoints/X.ckpt`` → ``<run>/config.yaml``).

    Raises:
        ExportError: When no ``config.yaml`` is next to the checkpoint or one folder up.
    """
    path = Path(checkpoint_path).expanduser()
    for folder in (path.parent.parent, path.parent):
        if (folder / "config.yaml").is_file():
            return build_datamodule(read_run(folder))
    raise ExportError(
        f"--quantize needs the run's data to calibrate and test on, but no config.yaml is next to {str(path)!r} or "
        "one folder up; export a checkpoint inside its `visiondistill fit` run folder (<run>/checkpoints/*.ckpt)"
    )


def quantize_export(
    checkpoint_path: str | Path,
    spec: ExportSpec,
    fp32_path: str | Path,
    datamodule: Any,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    latency_runs: int = 50,
    threads: int = 1,
    batches: list[np.ndarray] | None = None,
) -> QuantizationSummary:
    """Quantizes an exported student to INT8 and measures fp32, INT8 (and the teacher's fp32) in onnxruntime.

    Args:
        checkpoint_path: The student's checkpoint (`visiondistill.reporting.export.load_export_spec`).
        spec: Its export spec (the task name and input shape).
        fp32_path: The fp32 ONNX file `export_onnx` wrote; the INT8 file goes next to it as ``<name>.int8.onnx``.
        datamodule: The run's datamodule: training images calibrate, the test split is measured.
        calibration_images: How many training images calibrate the activation ranges.
        latency_runs: Timed batch-1 runs per model (after 5 warm-up runs).
        threads: onnxruntime intra-op threads.
        batches: The calibration images, when already read (`calibration_batches`).

    Returns:
        The summary, also written as ``<name>.quantization.json`` and ``.md`` next to ``fp32_path``.

    Raises:
        ExportError: For a task whose student cannot be measured in INT8, or bad counts.
    """
    check_quantizable(spec)
    for name, value in (("--latency-runs", latency_runs), ("--threads", threads)):
        if not isinstance(value, int) or value < 1:
            raise ExportError(f"{name} must be a whole number >= 1, got {value!r}")
    fp32_path = Path(fp32_path)
    batches = batches if batches is not None else calibration_batches(datamodule, calibration_images)
    check_image_size(spec, batches)
    int8_path = fp32_path.with_suffix(".int8.onnx")
    excluded = quantize_int8(fp32_path, int8_path, batches, spec.task)
    shape = tuple(spec.example.shape)
    module = load_task_module(checkpoint_path)
    fp32 = _measure(module, fp32_path, datamodule, shape, threads, latency_runs)
    int8 = _measure(module, int8_path, datamodule, shape, threads, latency_runs)
    agreements, errors = _compare(fp32_path, int8_path, datamodule, spec.task, module.student)
    summary = QuantizationSummary(
        spec.task, sum(len(b) for b in batches), threads, latency_runs, fp32, int8, min(agreements), max(errors)
    )
    summary.excluded_nodes = excluded
    why = [f"{excluded} node(s) left in fp32: {EXCLUDED_WHY[spec.task]}."] if excluded else []
    # The rebuilt module's hparams have no teacher (the loader drops it): the checkpoint's own record names it.
    recorded = read_checkpoint(Path(checkpoint_path)).get("hyper_parameters") or {}
    teacher_checkpoint = _teacher_checkpoint(recorded)
    if teacher_checkpoint is not None:
        teacher, note = _measure_teacher(teacher_checkpoint, fp32_path, datamodule, shape, threads, latency_runs)
        summary.teacher, summary.notes = teacher, [note] if note else []
    if getattr(module, "heads", ()):  # the graph's outputs are the heads, in the order of `_compare`'s figures
        summary.heads = {
            head: {"agreement": agreement, "relative_error": error}
            for head, agreement, error in zip(spec.output_names, agreements, errors, strict=True)
        }
        # As for one teacher, only teachers read from a checkpoint are measured (not a random network).
        entries = [entry for entry in recorded.get("teachers") or [] if entry.get("checkpoint")]
        if entries:
            _measure_head_teachers(summary, module, entries, fp32_path, datamodule, shape, threads, latency_runs)
    summary.notes = why + summary.notes
    fp32_path.with_suffix(".quantization.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    fp32_path.with_suffix(".quantization.md").write_text(summary.table() + "\n")
    return summary


def _measure_teacher(
    checkpoint: Path, student_path: Path, datamodule: Any, shape: tuple[int, ...], threads: int, runs: int
) -> tuple[Variant | None, str]:
    """The teacher checkpoint's fp32 ONNX figures (its file: ``<student name>.teacher.onnx``), or why there are none."""
    try:
        spec = load_export_spec(checkpoint, image_size=shape[-1])
        path = export_onnx(spec, student_path.with_suffix(".teacher.onnx")).path
        return _measure(load_task_module(checkpoint), path, datamodule, shape, threads, runs), ""
    except VisionDistillError as error:
        return None, f"the teacher ({checkpoint}) was not measured: {error}"


def _measure_head_teachers(
    summary: QuantizationSummary,
    module: Any,
    entries: Sequence[Mapping[str, Any]],
    student_path: Path,
    datamodule: Any,
    shape: tuple[int, ...],
    threads: int,
    runs: int,
) -> None:
    """A multi-task student's teachers (one per head) in fp32 ONNX, into ``summary.teachers`` (or a note why not).

    Each is rebuilt from the run's recorded ``teachers`` (`MultiTaskModule.build_teachers`), exported to
    ``<student name>.teacher.<id>.onnx`` and scored on the test split with its head's metric
    (`MultiTaskModule.score_heads`: top-1 for ``cls``, mIoU for ``seg``), as the report's multi-task section scores
    the teachers in PyTorch. A teacher that cannot be rebuilt or exported gets a note instead of a row.
    """
    try:
        heads = {tid: str(fields.get("head")) for tid, _, fields in parse_teacher_entries(list(entries))}
        networks = module.build_teachers(entries)
    except (VisionDistillError, OSError) as error:
        summary.notes.append(f"the teachers of the heads were not measured: {error}")
        return
    summary.teacher_heads = heads
    datamodule.setup("test")
    for tid, network in networks.items():
        spec = ExportSpec(network, torch.rand(shape), task=f"{heads[tid]} teacher")
        try:
            path = export_onnx(spec, student_path.with_suffix(f".teacher.{tid}.onnx")).path
        except VisionDistillError as error:
            summary.notes.append(f"the teacher {tid} ({heads[tid]} head) was not measured: {error}")
            continue
        session = _session(path, threads)
        metrics = module.score_heads({heads[tid]: OnnxStudent(session)}, datamodule.test_dataloader())
        summary.teachers[tid] = _variant(path, session, metrics, shape, runs)


def build_parser() -> argparse.ArgumentParser:
    """`visiondistill export`'s parser with the ``--quantize`` options."""
    parser = export_parser()
    parser.add_argument(
        "--quantize",
        help="also write a statically quantized model (supported: int8; QDQ, calibrated on the run's training images) "
        "and measure fp32 vs INT8 accuracy and latency in onnxruntime (docs/export.md)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help=f"training images that calibrate INT8 (default {DEFAULT_CALIBRATION_IMAGES})",
    )
    parser.add_argument("--latency-runs", type=int, default=50, help="timed batch-1 runs per model (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for latency (default 1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``visiondistill export`` (`visiondistill.reporting.export.main` plus ``--quantize int8``).

    Returns:
        0 on success, 1 when the export or quantization fails, 2 on bad arguments (printed to stderr).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quantize is None:
        return export_main(argv, parser)
    if str(args.quantize).lower() not in QUANTIZE_MODES:
        print(f"visiondistill export: unknown --quantize {args.quantize!r}; supported: int8", file=sys.stderr)
        return 2
    for name in ("calibration_images", "latency_runs", "threads"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            print(f"visiondistill export: {flag} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    data: dict[str, Any] = {}

    def before(args: argparse.Namespace, spec: ExportSpec, output: Path) -> None:
        check_quantizable(spec)  # refused before the fp32 file is written, as are a checkpoint without its run
        data["datamodule"] = run_datamodule(args.checkpoint)  # and images of another size
        data["batches"] = calibration_batches(data["datamodule"], args.calibration_images)
        check_image_size(spec, data["batches"])

    def after(args: argparse.Namespace, spec: ExportSpec, output: Path) -> None:
        summary = quantize_export(
            args.checkpoint,
            spec,
            output,
            data["datamodule"],
            args.calibration_images,
            args.latency_runs,
            args.threads,
            batches=data["batches"],
        )
        print(f"quantized to INT8: {summary.int8.path}; summary in {output.with_suffix('.quantization.md')}")
        print(summary.table())

    return export_main(argv, parser, before=before, after=after)
