"""Measuring the runs of a report: test metrics, size and cost, and agreement with the teacher."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from visiondistill.core.errors import VisionDistillError
from visiondistill.core.protocol import batch_inputs, output_logits
from visiondistill.core.teachers import ensemble_logits, parse_teacher_entries
from visiondistill.models.checkpoints import CheckpointError
from visiondistill.reporting.cost import count_flops, count_parameters, measure_latency
from visiondistill.reporting.loader import load_task_module
from visiondistill.reporting.runs import Run, RunError, build_datamodule


@dataclass
class Measurements:
    """What a report shows for one run.

    Attributes:
        test: The task module's ``test/*`` metrics of the run's checkpoint on the test split.
        params: Parameters of the network the run trained.
        flops: FLOPs of one forward pass on one image (``torch.utils.flop_counter``; a multiply-add counts 2).
        latency_ms: Median CPU wall time of one forward pass on one image, in milliseconds.
        checkpoint_mb: Size of the run's checkpoint file (teacher weights are never stored in it).
        saliency: Grad-CAM agreement with the teacher on test images (students only, when measured).
        attention: Attention-map cosine and CKA with the teacher per stage (students only, when measured).
        teachers: With several teachers: the share of the student's predictions that agree with each teacher's (by
            id) and with their weighted ensemble's (``ensemble``), on test images (`teacher_prediction_agreement`).
    """

    test: dict[str, float]
    params: int
    flops: int
    latency_ms: float
    checkpoint_mb: float
    saliency: dict[str, float] = field(default_factory=dict)
    attention: dict[str, float] = field(default_factory=dict)
    teachers: dict[str, float] = field(default_factory=dict)


def metric_levels(key: str, heads: Sequence[str] = ()) -> int:
    """Levels of a metric's name below its stage, a multi-task head not counted.

    ``test/miou`` and ``test/seg/miou`` (``seg`` in ``heads``): 1, a headline metric; ``test/iou/cat`` and
    ``test/seg/iou/cat``: 2, a per-class metric.
    """
    parts = key.split("/")
    return len(parts) - (2 if len(parts) > 2 and parts[1] in heads else 1)


@torch.no_grad()
def teacher_prediction_agreement(
    student: nn.Module,
    teachers: dict[str, nn.Module],
    weights: dict[str, float],
    images: Tensor,
    heads: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """How often the student predicts what each teacher, and what the teachers' ensemble, predicts.

    A prediction is the top class of each image (classification) or of each pixel (segmentation: the argmax over
    dimension 1 of ``N×C×H×W`` logits). The ensemble's prediction is the top class of the weighted average of the
    teachers' probabilities at ``T = 1`` (`visiondistill.core.teachers.ensemble_logits`), the soft target that
    ensemble KD trains towards.

    Args:
        student: The student network (eval mode).
        teachers: The teachers by id (eval mode).
        weights: Their ensemble weights by id.
        images: The test images.
        heads: On a multi-task student (docs/multitask.md): the head each teacher teaches, by id. Each teacher is
            then compared with that head of the student's output dict, and there is no ensemble (the teachers
            predict different things).

    Returns:
        The agreement (0–1) with each teacher by id, and with their ensemble under ``"ensemble"`` (not with
        ``heads``).
    """
    out = student(images)
    logits = {teacher_id: output_logits(teacher(images)) for teacher_id, teacher in teachers.items()}
    if heads:
        return {tid: _agreement(out[heads[tid]], value) for tid, value in logits.items()}
    predicted = output_logits(out).argmax(dim=1)
    result = {tid: float((predicted == value.argmax(dim=1)).float().mean()) for tid, value in logits.items()}
    ensemble = ensemble_logits(list(logits.values()), [weights[tid] for tid in logits], temperature=1.0)
    result["ensemble"] = float((predicted == ensemble.argmax(dim=1)).float().mean())
    return result


def _agreement(student_logits: Tensor, teacher_logits: Tensor) -> float:
    return float((student_logits.argmax(dim=1) == teacher_logits.argmax(dim=1)).float().mean())


def teacher_heads(run: Run) -> dict[str, str]:
    """The head each of a run's teachers teaches, by id (multi-task runs, docs/multitask.md); empty otherwise."""
    entries = run.hparams.get("teachers")
    if not entries:
        return {}
    return {tid: str(fields["head"]) for tid, _, fields in parse_teacher_entries(entries) if fields.get("head")}


def several_teachers(run: Run, module: Any) -> tuple[dict[str, nn.Module], dict[str, float]]:
    """The teachers a run distilled from with several teachers (``teachers:``), rebuilt from their specs, and weights.

    Args:
        run: The run (its recorded ``teachers`` hyper-parameter).
        module: Its task module (`load_run_module`), whose class builds the networks, or whose ``build_teachers``
            does where it has one (`visiondistill.tasks.MultiTaskModule`: teachers of different kinds).

    Returns:
        The teachers by id (eval mode, CPU) and their weights; both empty when the run had one teacher or none.

    Raises:
        VisionDistillError: When a teacher cannot be rebuilt (e.g. its checkpoint is gone).
    """
    entries = run.hparams.get("teachers")
    if not entries:
        return {}, {}
    weights = {teacher_id: weight for teacher_id, weight, _ in parse_teacher_entries(entries)}
    if hasattr(module, "build_teachers"):  # a module whose teachers differ in kind builds them itself (multi-task)
        return {tid: network.eval().cpu() for tid, network in module.build_teachers(entries).items()}, weights
    task = type(module)
    teachers = {}
    for teacher_id, _, fields in parse_teacher_entries(entries):
        role = f"teachers.{teacher_id}"
        spec = task.spec_class.coerce(fields, role=role)
        teachers[teacher_id] = task.model_factory(spec, getattr(module, task.outputs_arg), role).eval().cpu()
    return teachers, weights


def test_metrics(module: pl.LightningModule, datamodule: Any) -> dict[str, float]:
    """Runs Lightning's test loop on the CPU, without logger or callbacks, and returns its metrics."""
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[],
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        results = trainer.test(module, datamodule=datamodule, verbose=False)
    return {key: float(value) for key, value in (results[0] if results else {}).items()}


def probe_batch(datamodule: Any, num_images: int) -> Any:
    """The first ``num_images`` test samples as one batch, collated by the test loader's own ``collate_fn``."""
    loader = datamodule.test_dataloader()
    single = DataLoader(loader.dataset, batch_size=num_images, shuffle=False, collate_fn=loader.collate_fn)
    return next(iter(single))


def _probe_settings(run: Run) -> dict[str, Any]:
    """Method and layers of the agreement measurement: those of the run's own explanation callbacks, if any."""
    settings: dict[str, Any] = {"method": "gradcam", "cam_teacher": [-1], "cam_student": [-1]}
    settings |= {"at_teacher": [-1], "at_student": [-1]}
    for callback in run.callbacks("GradCAMCallback"):
        args = callback.get("init_args") or {}
        layers = args.get("layers") if args.get("layers") is not None else [-1]
        layers = layers if isinstance(layers, list) else [layers]
        settings["method"] = args.get("method", "gradcam")
        settings["cam_teacher"] = _as_list(args.get("teacher_layers"), layers)
        settings["cam_student"] = _as_list(args.get("student_layers"), layers)
    for callback in run.callbacks("FeatureMapCallback"):
        args = callback.get("init_args") or {}
        settings["at_teacher"] = _as_list(args.get("teacher_layers"), [-1])
        settings["at_student"] = _as_list(args.get("student_layers"), settings["at_teacher"])
    return settings


def _as_list(value: Any, default: Sequence[Any]) -> list[Any]:
    if value is None:
        return list(default)
    return list(value) if isinstance(value, list | tuple) else [value]


def load_run_module(run: Run) -> pl.LightningModule:
    """The run's task module (student only, eval mode, CPU), rebuilt from its checkpoint by the one loader.

    Raises:
        RunError: When the checkpoint cannot be rebuilt (its message says why).
    """
    try:
        return load_task_module(run.checkpoint)
    except CheckpointError as error:
        raise RunError(f"{run.path}: {error}") from error


def measure_runs(
    runs: Sequence[Run],
    num_images: int = 32,
    data_dir: str | None = None,
    log: Any = print,
    modules: dict[str, Any] | None = None,
    datamodule: Any = None,
) -> dict[str, Measurements]:
    """Measures every run of a report on the test split of the first run's data.

    Agreement with the teacher is measured for every student run when a teacher run is among ``runs``, with the
    grad-cam method and layers of the first distilled run's explanation callbacks (stage ``-1`` by default), on
    the first ``num_images`` test images, so scratch and distilled students are compared on the same footing.

    Args:
        runs: The runs, roles assigned (`visiondistill.reporting.runs.assign_roles`).
        num_images: Test images of the agreement measurement.
        data_dir: Data folder replacing the one in the configs (e.g. when the report runs elsewhere).
        log: Where progress lines go.
        modules: Task modules by run name, to reuse; the ones missing are loaded (`load_run_module`) and added.
        datamodule: The datamodule to test on; default: the first run's (`build_datamodule`).

    Returns:
        Measurements by run name.
    """
    from visiondistill.core.saliency import saliency_adapter_for
    from visiondistill.explain.agreement import attention_teacher_agreement, saliency_teacher_agreement

    datamodule = datamodule if datamodule is not None else build_datamodule(runs[0], data_dir)
    modules = modules if modules is not None else {}
    measured: dict[str, Measurements] = {}
    example: Tensor | None = None
    for run in runs:
        log(f"== measuring {run.name} ({run.role}, {run.checkpoint})")
        module = modules[run.name] if run.name in modules else load_run_module(run)
        modules[run.name] = module
        metrics = test_metrics(module, datamodule)
        if example is None:
            example = batch_inputs(probe_batch(datamodule, 1))
        network: nn.Module = module.student.eval()
        measured[run.name] = Measurements(
            test=metrics,
            params=count_parameters(network),
            flops=count_flops(network, example),
            latency_ms=measure_latency(network, example),
            checkpoint_mb=run.checkpoint.stat().st_size / 2**20,
        )
    _measure_several_teachers(runs, modules, measured, batch_inputs(probe_batch(datamodule, num_images)), log)
    teachers = [run for run in runs if run.role == "teacher"]
    if not teachers:
        return measured
    teacher = modules[teachers[0].name].student
    reference = next((run for run in runs if run.role == "distilled"), runs[-1])
    settings = _probe_settings(reference)
    batch = probe_batch(datamodule, num_images)
    images = batch_inputs(batch)
    for run in runs:
        if run.role == "teacher":
            continue
        module = modules[run.name]
        student = module.student
        try:
            measured[run.name].saliency = saliency_teacher_agreement(
                saliency_adapter_for(module),
                teacher,
                student,
                batch,
                method=settings["method"],
                teacher_layers=settings["cam_teacher"],
                student_layers=settings["cam_student"],
            )
        except (NotImplementedError, KeyError, ValueError, RuntimeError) as error:
            log(f"   Grad-CAM agreement of {run.name} not measured: {error}")
        try:
            measured[run.name].attention = attention_teacher_agreement(
                teacher, student, images, settings["at_teacher"], settings["at_student"]
            )
        except (KeyError, ValueError, RuntimeError) as error:
            log(f"   attention agreement of {run.name} not measured: {error}")
    return measured


def _measure_several_teachers(
    runs: Sequence[Run], modules: dict[str, Any], measured: dict[str, Measurements], images: Tensor, log: Any
) -> None:
    """Agreement with each teacher and their ensemble, for every student, when a run distilled from several."""
    source = next((run for run in runs if run.role == "distilled" and run.hparams.get("teachers")), None)
    if source is None:
        return
    try:
        teachers, weights = several_teachers(source, modules[source.name])
    except (VisionDistillError, OSError, RuntimeError) as error:
        log(f"   agreement with the teachers of {source.name} not measured: {error}")
        return
    for run in runs:
        if run.role != "teacher":
            student = modules[run.name].student.eval()
            measured[run.name].teachers = teacher_prediction_agreement(
                student, teachers, weights, images, teacher_heads(source)
            )
