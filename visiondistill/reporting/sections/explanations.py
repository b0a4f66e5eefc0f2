"""The explanation sections of a report: agreement on a scale, faithfulness, sanity checks and robustness.

The generic report's agreement table says how close each student's Grad-CAM is to the teacher's; on its own that
number has no scale. These sections give it one and ask whether the maps mean anything, for every task with a
saliency adapter and for each explanation method of `ExplanationSettings.methods` (a CAM and a Captum method by
default, so agreement is not tied to one method's resolution):

- **Agreement with baselines**: the students' agreement with the teacher beside a *floor* — a randomly initialised
  network of the first student's architecture (`visiondistill.explain.sanity.randomise_`) — and a *ceiling* — a
  second teacher (another seed) when the report is given one, else (classification only) the teacher on mirrored
  inputs, its maps mirrored back. Each cell is the mean over images with a bootstrap 95 % confidence interval
  (percentile method, `ExplanationSettings.bootstrap` resamples of the images, seeded); runs of the same role and
  distillation terms (several seeds) also get a ``mean ± std`` row over their run means.
- **Faithfulness** per model (`visiondistill.explain.faithfulness`), **sanity checks** per model and method
  (`visiondistill.explain.sanity`) and **robustness** per model (`visiondistill.explain.robustness`), on the first
  `ExplanationSettings.images` test images (they cost up to a second per image and model).

Every model explains the teacher's prediction on each image (the student's when there is no teacher).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from visiondistill.core.errors import ConfigError
from visiondistill.core.protocol import batch_inputs
from visiondistill.core.saliency import ClassificationSaliencyAdapter, SaliencyAdapter, saliency_adapter_for
from visiondistill.explain.attribution import ATTRIBUTION_METHODS, is_attribution_method, network_maps
from visiondistill.explain.faithfulness import FAITHFULNESS_KEYS, faithfulness_scores, probability_targets
from visiondistill.explain.metrics import saliency_agreement_per_image
from visiondistill.explain.probe import untouched_training_state
from visiondistill.explain.robustness import max_sensitivity, pgd_explanation_shift
from visiondistill.explain.sanity import cascading_randomisation, randomise_
from visiondistill.reporting.document import Block, Heading, Paragraph, Table
from visiondistill.reporting.runs import Run
from visiondistill.reporting.sections.context import SectionContext

__all__ = ["ExplanationSettings", "bootstrap_ci", "explanation_sections"]

#: Agreement columns of the baseline table (the full set is in the generic agreement table).
_AGREEMENT_KEYS = ("pearson", "spearman", "topk_iou")
_ROBUSTNESS_KEYS = ("max_sensitivity", "pgd_spearman", "pgd_score_drop")
#: What a measure may raise on a task or model it cannot handle; the report is written without that table.
_MEASURE_ERRORS = (KeyError, ValueError, RuntimeError, NotImplementedError, IndexError)


@dataclass
class ExplanationSettings:
    """What the explanation sections measure and how much.

    Attributes:
        methods: Explanation methods (grad-cam names and Captum names, `visiondistill.explain.attribution`).
        images: Test images of faithfulness, sanity and robustness (agreement uses all the report's images).
        bootstrap: Bootstrap resamples of the confidence intervals.
        seed: Seed of the bootstrap, the floor's initialisation, the ROAD noise and the sensitivity noise.
        faithfulness: Measure faithfulness.
        sanity: Run the cascading randomisation.
        robustness: Measure max-sensitivity and the PGD shift.
        epsilon: L∞ radius of the PGD perturbation (input space, after normalisation).
        radius: Noise half-width of max-sensitivity (input space).
        sensitivity_samples: Noise draws per image of max-sensitivity.
        attribution_options: Settings of the Captum methods (`visiondistill.explain.attribution.attribute`).
    """

    methods: tuple[str, ...] = ("gradcam", "integrated_gradients")
    images: int = 16
    bootstrap: int = 1000
    seed: int = 0
    faithfulness: bool = True
    sanity: bool = True
    robustness: bool = True
    epsilon: float = 0.03
    radius: float = 0.02
    sensitivity_samples: int = 5
    attribution_options: dict[str, Any] = field(default_factory=lambda: {"n_steps": 16})

    def __post_init__(self) -> None:
        from visiondistill.explain.cam import CAM_METHODS, cam_method

        self.methods = tuple(self.methods)
        for method in self.methods:
            try:
                if not is_attribution_method(method):
                    cam_method(method)
            except ValueError as error:
                raise ConfigError(
                    f"explanation method {method!r} is unknown; valid methods are: {', '.join(CAM_METHODS)}, "
                    f"{', '.join(ATTRIBUTION_METHODS)}"
                ) from error
        if not self.methods:
            raise ConfigError("give at least one explanation method (e.g. --explain-methods gradcam)")
        if isinstance(self.images, bool) or not isinstance(self.images, int) or self.images < 1:
            raise ConfigError(f"explanation images must be a positive integer, got {self.images!r}")


def bootstrap_ci(
    values: Tensor, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of per-image values and its percentile bootstrap confidence interval (NaNs left out).

    Args:
        values: ``(N,)`` per-image values.
        resamples: Bootstrap resamples (each draws ``N`` images with replacement, torch generator seeded by ``seed``).
        seed: Seed of the resampling.
        level: Coverage of the interval.

    Returns:
        ``(mean, low, high)``; NaNs when no value is finite.

    Example::

        >>> bootstrap_ci(torch.tensor([1.0, 1.0, 1.0]))
        (1.0, 1.0, 1.0)
    """
    values = values.detach().double().flatten()
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        return (float("nan"),) * 3
    generator = torch.Generator().manual_seed(seed)
    means = values[torch.randint(0, values.numel(), (resamples, values.numel()), generator=generator)].mean(dim=1)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=means.dtype)).tolist()
    return float(values.mean()), low, high


def _number(value: float) -> str:
    """Three decimals; a value that rounds to zero is ``0.000``, never ``-0.000``."""
    text = f"{value:.3f}"
    return "0.000" if text == "-0.000" else text


def _cell(values: Tensor, settings: ExplanationSettings) -> str:
    mean, low, high = bootstrap_ci(values, settings.bootstrap, settings.seed)
    return "–" if mean != mean else f"{_number(mean)} [{_number(low)}, {_number(high)}]"


@dataclass
class _Model:
    """One explained network of the sections: its name in the tables, role, network and CAM layers."""

    name: str
    role: str
    network: nn.Module
    layers: list[Any]
    mirrored: bool = False
    group: str = ""


def _callback_layers(run: Run | None) -> tuple[list[Any], list[Any], str | None]:
    """Teacher layers, student layers and CAM method of a run's GradCAMCallback (stage -1 and gradcam otherwise)."""
    for callback in run.callbacks("GradCAMCallback") if run is not None else []:
        args = callback.get("init_args") or {}
        layers = args.get("layers") if args.get("layers") is not None else [-1]
        layers = layers if isinstance(layers, list) else [layers]

        def as_list(value: Any, layers: list[Any] = layers) -> list[Any]:
            return layers if value is None else (list(value) if isinstance(value, list | tuple) else [value])

        return as_list(args.get("teacher_layers")), as_list(args.get("student_layers")), args.get("method")
    return [-1], [-1], None


def _distillation_group(run: Run) -> str:
    terms = sorted(
        str(c.get("class_path", "")).rsplit(".", 1)[-1]
        for c in run.callbacks()
        if str(c.get("class_path", "")).startswith("visiondistill.distill.")
    )
    return f"{run.role}: {' + '.join(terms) or 'no distillation'}"


def _models(
    context: SectionContext, ceiling: tuple[str, nn.Module] | None, seed: int
) -> tuple[list[_Model], list[str]]:
    """The explained networks: teacher, students, floor and ceiling; and notes on what is missing."""
    teacher_run = context.teacher
    # The CAM layers of the first distilled run's GradCAMCallback (else the first student's), as the generic report.
    reference = next((r for r in context.runs if r.role == "distilled"), None) or next(iter(context.students), None)
    teacher_layers, student_layers, _ = _callback_layers(reference)
    models, notes = [], []
    if teacher_run is not None:
        models.append(_Model(teacher_run.name, "teacher", context.network(teacher_run), teacher_layers))
    for run in context.students:
        models.append(_Model(run.name, run.role, context.network(run), student_layers, group=_distillation_group(run)))
    students = [m for m in models if m.role != "teacher"]
    if students:
        floor = randomise_(copy.deepcopy(students[0].network), seed=seed).eval()
        models.append(_Model(f"floor (random {students[0].name})", "floor", floor, student_layers))
    if teacher_run is not None:
        if ceiling is not None:
            models.append(_Model(f"ceiling ({ceiling[0]})", "ceiling", ceiling[1].eval(), teacher_layers))
        elif isinstance(saliency_adapter_for(context.modules[teacher_run.name]), ClassificationSaliencyAdapter):
            network = context.network(teacher_run)
            models.append(_Model("ceiling (teacher, mirrored)", "ceiling", network, teacher_layers, mirrored=True))
        else:
            notes.append(
                "No ceiling: mirroring moves this task's targets (regions, boxes, keypoints); give a second teacher "
                "run trained with another seed (`visiondistill report … --ceiling RUN_DIR`)."
            )
    return models, notes


def _maps(adapter: SaliencyAdapter, model: _Model, method: str, images: Tensor, targets: list, options: dict) -> Tensor:
    with untouched_training_state([model.network]):
        if not model.mirrored:
            return network_maps(adapter, model.network, method, images, targets, model.layers, **options)
        return network_maps(adapter, model.network, method, images.flip(-1), targets, model.layers, **options).flip(-1)


def explanation_sections(
    context: SectionContext,
    settings: ExplanationSettings | None = None,
    ceiling: tuple[str, nn.Module] | None = None,
) -> list[Block]:
    """The blocks of the module docstring's sections.

    Args:
        context: The report's material (runs, their modules, the test batch).
        settings: What to measure (`ExplanationSettings` defaults).
        ceiling: A second teacher run's name and network, the agreement ceiling; default the mirrored teacher.

    Returns:
        Report blocks (none when the runs have no saliency adapter or nothing to explain).
    """
    settings = settings or ExplanationSettings()
    heads = tuple(getattr(context.modules[context.runs[0].name], "heads", ()) or ())
    if heads and context.head is None:  # a multi-task student: each head explained on its own (docs/multitask.md)
        return [block for head in heads for block in explanation_sections(context.for_head(head), settings, ceiling)]
    adapter = context.saliency_adapter()
    models, notes = _models(context, ceiling, settings.seed)
    if not models:
        return []
    images = batch_inputs(context.batch).cpu()
    explained_by = models[0]  # the teacher when there is one
    explained = adapter.predict(adapter.cam_model(explained_by.network).eval(), images).cpu()
    targets = adapter.targets(explained, context.batch)
    count = min(settings.images, len(images))
    blocks: list[Block] = [
        Heading(
            "Explanations: agreement on a scale, faithfulness, sanity, robustness"
            + (f" — head `{context.head}`" if context.head else "")
        ),
        Paragraph(
            f"Methods: {', '.join(f'`{m}`' for m in settings.methods)}. Every model explains the prediction of "
            f"`{explained_by.name}` on each image. Cells: mean over images [bootstrap 95 % CI, {settings.bootstrap} "
            "resamples]. Definitions and references in docs/metrics.md."
        ),
        *[Paragraph(note) for note in notes],
    ]
    subset = (images[:count], targets[:count])
    for method in settings.methods:
        options = settings.attribution_options if is_attribution_method(method) else {}
        started = time.perf_counter()
        try:
            maps = {m.name: _maps(adapter, m, method, images, targets, options) for m in models}
        except _MEASURE_ERRORS as error:
            context.log(f"   explanations with {method} not written: {type(error).__name__}: {error}")
            blocks.append(Paragraph(f"`{method}`: no maps ({type(error).__name__}: {error})."))
            continue
        parts: list[tuple[bool, Callable[[], list[Block]]]] = [
            (True, partial(_agreement_blocks, method, models, maps, settings, len(images))),
            (settings.faithfulness, partial(_faithfulness_blocks, method, adapter, models, maps, *subset, settings)),
            (settings.sanity, partial(_sanity_blocks, method, adapter, models, *subset, options)),
            (settings.robustness, partial(_robustness_blocks, method, adapter, models, *subset, settings, options)),
        ]
        for wanted, build in parts:
            if not wanted:
                continue
            try:
                blocks += build()
            except _MEASURE_ERRORS as error:  # one measure a task cannot take leaves the others in the report
                context.log(f"   an explanation table with {method} not written: {type(error).__name__}: {error}")
        context.log(f"   explanations with {method}: {time.perf_counter() - started:.1f} s")
    return blocks


def _agreement_blocks(
    method: str, models: list[_Model], maps: dict[str, Tensor], settings: ExplanationSettings, count: int
) -> list[Block]:
    teacher = next((m for m in models if m.role == "teacher"), None)
    if teacher is None:
        return []
    rows, groups = [], {}
    for model in models[1:]:
        per_image = saliency_agreement_per_image(maps[teacher.name], maps[model.name])
        row = {"model": model.name, "role": model.role}
        rows.append(row | {key: _cell(per_image[key], settings) for key in _AGREEMENT_KEYS})
        if model.group:
            groups.setdefault(model.group, []).append({k: float(per_image[k].mean()) for k in _AGREEMENT_KEYS})
    for group, means in groups.items():
        if len(means) > 1:
            stats = {k: torch.tensor([m[k] for m in means], dtype=torch.float64) for k in _AGREEMENT_KEYS}
            row = {"model": f"{group} ({len(means)} runs)", "role": "mean ± std over runs"}
            rows.append(row | {k: f"{float(v.mean()):.3f} ± {float(v.std()):.3f}" for k, v in stats.items()})
    return [
        Heading(f"Agreement with the teacher on a scale — `{method}`", 3),
        Paragraph(
            f"{count} test images. The floor is a randomly initialised network (what agreement chance gives); the "
            "ceiling what a second equally good teacher (or the teacher itself on mirrored images) reaches. A student "
            "is only said to explain like the teacher when its interval lies clearly above the floor's."
        ),
        Table(rows),
    ]


def _faithfulness_blocks(
    method: str,
    adapter: SaliencyAdapter,
    models: list[_Model],
    maps: dict[str, Tensor],
    images: Tensor,
    targets: list,
    settings: ExplanationSettings,
) -> list[Block]:
    scored = [m for m in models if not m.mirrored]
    rows, started = [], time.perf_counter()
    for model in scored:
        wrapped = adapter.cam_model(model.network).eval()
        with untouched_training_state([model.network]):
            scores = faithfulness_scores(
                wrapped, images, maps[model.name][: len(images)], probability_targets(targets), seed=settings.seed
            )
        rows.append({"model": model.name} | {key: _cell(scores[key], settings) for key in FAITHFULNESS_KEYS})
    cost = (time.perf_counter() - started) / max(1, len(images) * len(scored))
    return [
        Heading(f"Faithfulness — `{method}`", 3),
        Paragraph(
            f"Each model's own maps on {len(images)} test images. Lower is more faithful for `deletion_auc`, "
            "`road_morf` and `average_drop`; higher for the others. Scores are class probabilities for "
            f"classification and the adapter's score otherwise. Cost here: {cost:.2f} s per image and model."
        ),
        Table(rows),
    ]


def _sanity_blocks(
    method: str, adapter: SaliencyAdapter, models: list[_Model], images: Tensor, targets: list, options: dict
) -> list[Block]:
    rows = []
    for model in (m for m in models if m.role not in ("floor", "ceiling")):

        def explain(network: nn.Module, layers: list[Any] = model.layers) -> Tensor:
            with untouched_training_state([network]):
                return network_maps(adapter, network, method, images, targets, layers, **options)

        result = cascading_randomisation(model.network, explain)
        curve = result.curve()
        rows.append(
            {
                "model": model.name,
                "blocks": len(curve),
                "top block": f"`{curve[0][0]}`",
                "spearman, top block": f"{curve[0][1]:.3f}",
                "spearman, all blocks": f"{curve[-1][1]:.3f}",
                "ssim, all blocks": f"{curve[-1][2]:.3f}",
                "check": (
                    "n/a: the trained maps are constant"
                    if not result.applicable
                    else "FLAGGED: maps survive randomisation"
                    if result.flagged
                    else "passed"
                ),
            }
        )
    return [
        Heading(f"Sanity check (cascading randomisation) — `{method}`", 3),
        Paragraph(
            "Adebayo et al. (2018): each network's blocks are re-initialised from the top down, and its maps compared "
            "with the trained network's (mean Spearman rank correlation and SSIM over images). A method whose maps "
            f"keep a rank correlation of 0.5 or more with every block randomised is flagged. {len(images)} images."
        ),
        Table(rows),
    ]


def _robustness_blocks(
    method: str,
    adapter: SaliencyAdapter,
    models: list[_Model],
    images: Tensor,
    targets: list,
    settings: ExplanationSettings,
    options: dict,
) -> list[Block]:
    rows = []
    for model in (m for m in models if m.role not in ("floor", "ceiling")):
        explain = _explainer(adapter, model, method, options)
        sensitivity = max_sensitivity(
            explain, images, targets, settings.radius, settings.sensitivity_samples, settings.seed
        )
        with untouched_training_state([model.network]):
            shift = pgd_explanation_shift(
                explain, adapter.cam_model(model.network).eval(), images, targets, settings.epsilon
            )
        values = {"max_sensitivity": sensitivity} | shift
        rows.append({"model": model.name} | {key: _cell(values[key], settings) for key in _ROBUSTNESS_KEYS})
    return [
        Heading(f"Robustness of the explanations — `{method}`", 3),
        Paragraph(
            f"Max-sensitivity (Captum, uniform noise of half-width {settings.radius} in the normalised input space, "
            f"{settings.sensitivity_samples} draws; lower is steadier) and the maps' rank correlation before and "
            f"after PGD on the explained score (L∞ ε = {settings.epsilon} in the normalised input space, 10 steps; "
            f"higher is steadier; `pgd_score_drop`: how much the attack lowered the score). {len(images)} images."
        ),
        Table(rows),
    ]


def _explainer(
    adapter: SaliencyAdapter, model: _Model, method: str, options: dict
) -> Callable[[Tensor, Sequence[Callable[[Tensor], Tensor]]], Tensor]:
    def explain(images: Tensor, targets: Sequence[Callable[[Tensor], Tensor]]) -> Tensor:
        with untouched_training_state([model.network]):
            return network_maps(adapter, model.network, method, images, list(targets), model.layers, **options)

    return explain
