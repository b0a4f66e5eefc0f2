"""`GradCAMCallback`: does the student look where the teacher looks? CAMs (or Captum maps) of both on a probe batch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from visiondistill.core.errors import ConfigError
from visiondistill.core.protocol import get_student
from visiondistill.core.recorder import LayerNotFoundError, LayerSpec, feature_stages, resolve_layer
from visiondistill.core.saliency import TARGET_KINDS, SaliencyAdapter, TargetKind
from visiondistill.explain.attribution import (
    ATTRIBUTION_METHODS,
    attribution_method,
    compute_attributions,
    is_attribution_method,
)
from visiondistill.explain.cam import cam_method, compute_cams, compute_layer_cams
from visiondistill.explain.faithfulness import FAITHFULNESS_KEYS, faithfulness_scores, probability_targets
from visiondistill.explain.heads import ExplainedHead, explained_head
from visiondistill.explain.metrics import SALIENCY_KEYS, pointing_game_hits, saliency_agreement_per_image
from visiondistill.explain.probe import ProbeBatch, ProbeCallback, layer_list, model_input, save_npz
from visiondistill.explain.render import comparison_grid, saliency_grid

#: Images shown in the layer-wise grid (one row each: input, then teacher and student CAM per stage).
_LAYERWISE_ROWS = 4


class GradCAMCallback(ProbeCallback):
    """Explains teacher and student with grad-cam on a fixed probe batch and logs how well their maps agree.

    At the end of validation (every ``every_n_epochs`` epochs of ``fit``, and at every ``validate``), for the
    same ``num_samples`` validation images each time, it computes a CAM of the teacher and one of the student for
    the same target class, and:

    - logs ``val/saliency/<metric>`` for pearson, spearman, topk_iou, cosine, sim and kld
      (`visiondistill.explain.metrics.saliency_agreement`), and ``val/saliency/pointing_game/{teacher,student}``
      when the batch has object masks or boxes;
    - with ``layerwise=True``, also CAMs at every pair of feature stages (matched by index from the end: ``-1``
      with ``-1``, ``-2`` with ``-2`` …), logged as ``val/saliency_layerwise/<stage>/<metric>``;
    - logs an image grid (input | teacher CAM | student CAM, captioned with true and predicted classes) to
      TensorBoard as ``val/saliency/grid`` and writes ``grid.png`` and ``maps.npz`` to
      ``<log_dir>/saliency/epoch_XXX/`` (plus ``layerwise.png`` / ``val/saliency_layerwise/grid`` in layer-wise
      mode: the first four images with both CAMs at every stage).

    With ``faithfulness_every_n_epochs``, at every probe of an epoch ``e`` with ``(e + 1) %
    faithfulness_every_n_epochs == 0`` (and at every ``validate``) it also measures how faithful each model's map is
    to that model (`visiondistill.explain.faithfulness.faithfulness_scores`: deletion / insertion AUC, ROAD, average
    drop / increase in confidence; class probabilities for classification), logged as
    ``val/faithfulness/{teacher,student}/<measure>`` and saved as ``faithfulness_{teacher,student}_<measure>`` in
    ``maps.npz``. It costs about 0.25 s per image and model at 32 px (0.5 s at 64 px), mostly ROAD.

    Without a teacher it computes the student's maps and the pointing game only. It never changes training: the
    probe images come from a generator of its own, the global random states, every module's train flag and every
    parameter's gradient are restored afterwards, and only global rank zero computes, logs and writes.

    ``maps.npz`` holds ``images`` (N×C×H×W float32 in [0, 1]), ``student_maps``/``teacher_maps`` (N×H×W float32 in
    [0, 1]), ``targets`` (true classes, -1 when unknown), ``explained`` (the classes explained), ``student_pred``,
    ``teacher_pred``, ``indices`` (dataset indices), ``epoch``, ``global_step``, ``class_names``, ``method``,
    ``target``, per-image metrics under their names (``pearson`` …), ``masks`` and ``pointing_game_{student,
    teacher}`` hits when masks exist, and ``layerwise_*`` arrays in layer-wise mode.

    Args:
        method: grad-cam method: gradcam, gradcam++, hirescam, xgradcam, layercam, eigencam, eigengradcam,
            gradcamelementwise, scorecam, ablationcam, kpcacam, shapleycam, fem, randomcam; or a Captum attribution
            method (`visiondistill.explain.attribution`): integrated_gradients, occlusion, kernel_shap, lime, which
            explain the input pixels (the layers are then unused, and ``layerwise`` is not available).
        every_n_epochs: Explain every this many training epochs.
        num_samples: Number of probe images.
        layers: Layer(s) to explain in both models (module paths or stage indices); default the last stage
            (``-1``). Several layers are averaged, as grad-cam does.
        student_layers: Student layer(s), overriding ``layers``.
        teacher_layers: Teacher layer(s), overriding ``layers``.
        target: Class to explain: the teacher's prediction (``"teacher"``), the true class (``"ground_truth"``) or
            the student's prediction (``"student"``). Without a teacher, ``"teacher"`` falls back to the true class.
        layerwise: Also explain and compare every matched pair of feature stages.
        top_k: Fraction of pixels for ``topk_iou``.
        seed: Seed of the probe-image draw.
        log_images: Log the grid to TensorBoard and write PNGs (``maps.npz`` is always written).
        save_dir: Folder for ``epoch_XXX/`` outputs instead of ``<log_dir>/saliency``.
        faithfulness_every_n_epochs: Also measure faithfulness every this many epochs (``None``: never).
        attribution_options: Settings of a Captum method (`visiondistill.explain.attribution.attribute`: ``n_steps``,
            ``baseline``, ``window``, ``stride``, ``grid``, ``n_samples``, …; and ``sign``).
        teacher: With several teachers (docs/teachers.md): the id of the teacher compared with; ``None``: the first.
        head: On a multi-task student (docs/multitask.md): the head to explain (``cls``, ``seg``), with that head's
            saliency adapter, against the teacher of that head (or ``teacher``, which must teach it). Required there;
            refused on a single-output student.

    Raises:
        ValueError: For an unknown method or target, a bad ``top_k``, or non-positive counts (a `ConfigError`); at
            setup, for a missing or unknown ``head`` on a multi-task student (the message names its heads).
        LayerNotFoundError: At setup, for a layer a model does not have (the message lists the valid ones).

    Example::

        >>> callback = GradCAMCallback(method="gradcam++", num_samples=8, layers="layer4")
        >>> callback.method, callback.student_layers, callback.teacher_layers
        ('gradcam++', ['layer4'], ['layer4'])
        >>> GradCAMCallback(method="magic")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        visiondistill.core.errors.ConfigError: unknown CAM method 'magic'; valid methods are: gradcam, gradcam++, ...
    """

    folder = "saliency"

    def __init__(
        self,
        method: str = "gradcam",
        every_n_epochs: int = 1,
        num_samples: int = 16,
        layers: LayerSpec | Sequence[LayerSpec] | None = None,
        student_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        teacher_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        target: TargetKind = "teacher",
        layerwise: bool = False,
        top_k: float = 0.1,
        seed: int = 0,
        log_images: bool = True,
        save_dir: str | Path | None = None,
        faithfulness_every_n_epochs: int | None = None,
        attribution_options: dict[str, Any] | None = None,
        teacher: str | None = None,
        head: str | None = None,
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs, num_samples=num_samples, seed=seed, log_images=log_images, save_dir=save_dir
        )
        self._attribution = attribution_method(method) if is_attribution_method(method) else None
        self._cam_class = None if self._attribution else _cam_class(method)
        self.method = method
        if self._attribution and layerwise:
            raise ConfigError(
                f"GradCAMCallback: layerwise=True compares CAMs of feature stages, but {method!r} explains the input "
                "pixels; use a CAM method for layer-wise maps, or layerwise=False"
            )
        every = faithfulness_every_n_epochs
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ConfigError(f"GradCAMCallback: faithfulness_every_n_epochs must be None or >= 1, got {every!r}")
        self.faithfulness_every_n_epochs = every
        self.attribution_options = dict(attribution_options or {})
        if target not in TARGET_KINDS:
            raise ConfigError(f"GradCAMCallback: target must be one of {', '.join(TARGET_KINDS)}, got {target!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int | float) or not 0 < top_k <= 1:
            raise ConfigError(f"GradCAMCallback: top_k must be a fraction in (0, 1], got {top_k!r}")
        default = [-1] if layers is None else layers
        student_layers = default if student_layers is None else student_layers
        teacher_layers = default if teacher_layers is None else teacher_layers
        self.student_layers = layer_list(student_layers, "GradCAMCallback", "student_layers")
        self.teacher_layers = layer_list(teacher_layers, "GradCAMCallback", "teacher_layers")
        self.target = target
        self.layerwise = bool(layerwise)
        self.top_k = float(top_k)
        self._adapter: SaliencyAdapter | None = None
        self._stage_pairs: list[tuple[str, str, str | None]] = []
        self._warned_target = False
        self.teacher_id = teacher
        self.head = head
        self._head: ExplainedHead | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._head = explained_head(pl_module, self.head, self.teacher_id, "GradCAMCallback")
        student = get_student(pl_module)
        teacher = self._head.teacher(pl_module, "GradCAMCallback.teacher")
        # Unknown layers fail here, before any epoch, with the valid choices in the message.
        for layer in self.student_layers:
            resolve_layer(student, layer, role="student")
        if teacher is not None:
            for layer in self.teacher_layers:
                resolve_layer(teacher, layer, role="teacher")
        self._stage_pairs = self._match_stages(student, teacher) if self.layerwise else []
        self._adapter = self._head.adapter

    @staticmethod
    def _match_stages(student: nn.Module, teacher: nn.Module | None) -> list[tuple[str, str, str | None]]:
        student_stages = feature_stages(student)
        teacher_stages = feature_stages(teacher) if teacher is not None else None
        for role, stages in (("student", student_stages), ("teacher", teacher_stages)):
            if stages is not None and not stages:
                raise LayerNotFoundError(
                    f"GradCAMCallback(layerwise=True): the {role} declares no feature stages (no `feature_info`), "
                    "so its stages cannot be matched; use layerwise=False and name the layers by module path"
                )
        count = min(len(student_stages), len(teacher_stages)) if teacher_stages is not None else len(student_stages)
        return [
            (str(-k), student_stages[-k].module, teacher_stages[-k].module if teacher_stages is not None else None)
            for k in range(count, 0, -1)
        ]

    @override
    def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: ProbeBatch, out_dir: Path) -> None:
        head = self._head or explained_head(pl_module, self.head, self.teacher_id, "GradCAMCallback")
        adapter = self._adapter or head.adapter
        student = get_student(pl_module)
        teacher = head.teacher(pl_module, "GradCAMCallback.teacher")
        height, width = batch.images.shape[-2:]
        view = head.batch(pl_module, batch.batch)  # what the adapter reads: the explained head's targets
        student_model = adapter.cam_model(head.student(student)).eval()
        teacher_model = adapter.cam_model(teacher).eval() if teacher is not None else None
        student_pred = adapter.predict(student_model, model_input(batch.images, student)).cpu()
        teacher_pred = None
        if teacher_model is not None:
            teacher_pred = adapter.predict(teacher_model, model_input(batch.images, teacher)).cpu()
        truth = adapter.ground_truth(view)
        explained = self._explained(truth, student_pred, teacher_pred)
        targets = adapter.targets(explained, view)
        masks = adapter.masks(view, height, width)

        student_group = tuple(resolve_layer(student, layer, role="student")[0] for layer in self.student_layers)
        student_all = self._maps(
            adapter,
            student,
            student_model,
            batch.images,
            targets,
            [student_group] + [(s,) for _, s, _ in self._stage_pairs],
        )
        student_maps, teacher_maps, teacher_all = student_all[student_group], None, {}
        if teacher is not None:
            teacher_group = tuple(resolve_layer(teacher, layer, role="teacher")[0] for layer in self.teacher_layers)
            teacher_all = self._maps(
                adapter,
                teacher,
                teacher_model,
                batch.images,
                targets,
                [teacher_group] + [(t,) for _, _, t in self._stage_pairs],
            )
            teacher_maps = teacher_all[teacher_group]
        arrays = self._score(pl_module, "val/saliency", student_maps, teacher_maps, masks)
        if self._faithfulness_due(trainer):
            for role, model, wrapped, maps in (
                ("student", student, student_model, student_maps),
                ("teacher", teacher, teacher_model, teacher_maps),
            ):
                if model is not None and maps is not None:
                    inputs = model_input(batch.images, model)
                    arrays |= self._faithfulness(pl_module, role, wrapped, inputs, maps, targets)

        layer_columns: list[tuple[str, Tensor]] = []
        if self._stage_pairs:
            layerwise: dict[str, list] = {}
            for label, student_path, teacher_path in self._stage_pairs:
                s_maps = student_all[(student_path,)]
                t_maps = teacher_all.get((teacher_path,)) if teacher_path is not None else None
                scores = self._score(pl_module, f"val/saliency_layerwise/{label}", s_maps, t_maps, masks)
                scores.update(stages=np.array(label), student_maps=s_maps.numpy())
                if t_maps is not None:
                    scores["teacher_maps"] = t_maps.numpy()
                    layer_columns.append((f"T {label}", t_maps))
                layer_columns.append((f"S {label}", s_maps))
                for key, value in scores.items():
                    layerwise.setdefault(key, []).append(value)
            arrays.update({f"layerwise_{key}": np.stack(values) for key, values in layerwise.items()})

        display = batch.display_images()
        class_names = head.class_names(pl_module) or _class_names(
            adapter, trainer, pl_module, student_pred, teacher_pred, truth
        )
        kind = self._effective_target(truth, teacher_pred)
        arrays.update(
            images=display.numpy(),
            student_maps=student_maps.numpy(),
            student_pred=student_pred.numpy(),
            explained=explained.numpy(),
            targets=(truth if truth is not None else torch.full_like(student_pred, -1)).numpy(),
            indices=batch.indices.numpy(),
            epoch=np.int64(trainer.current_epoch),
            global_step=np.int64(trainer.global_step),
            class_names=np.array(class_names, dtype=str),
            method=np.array(self.method),
            target=np.array(kind),
        )
        if teacher_maps is not None and teacher_pred is not None:
            arrays.update(teacher_maps=teacher_maps.numpy(), teacher_pred=teacher_pred.numpy())
        if masks is not None:
            arrays["masks"] = masks.numpy()
        save_npz(out_dir / "maps.npz", arrays)
        if not self.log_images:
            return
        title = f"epoch {trainer.current_epoch} · {self.method} · target: {kind.replace('_', ' ')}"
        grid = saliency_grid(
            adapter.annotate(display, view),
            student_maps,
            teacher_maps,
            true_labels=truth.tolist() if truth is not None else None,
            student_pred=student_pred.tolist(),
            teacher_pred=teacher_pred.tolist() if teacher_pred is not None else None,
            class_names=class_names,
            title=title,
        )
        self.save_image(trainer, "val/saliency/grid", grid, out_dir / "grid.png")
        if layer_columns:
            shown = min(len(display), _LAYERWISE_ROWS)
            grid = comparison_grid(
                display[:shown],
                [(name, maps[:shown]) for name, maps in layer_columns],
                labels=[f"#{int(i)}" for i in batch.indices[:shown]],
                samples_per_row=1,
                title=f"epoch {trainer.current_epoch} · {self.method} per stage (T teacher, S student; -1 = last)",
            )
            self.save_image(trainer, "val/saliency_layerwise/grid", grid, out_dir / "layerwise.png")

    def _maps(
        self,
        adapter: SaliencyAdapter,
        model: nn.Module,
        wrapped: nn.Module,
        images: Tensor,
        targets: list,
        groups: list[tuple[str, ...]],
    ) -> dict[tuple[str, ...], Tensor]:
        """CAMs of ``model`` for each group of layer paths; every single-layer group comes out of one pass.

        An attribution method explains the input, whatever the layers: every group gets the same maps.
        """
        inputs = model_input(images, model)
        if self._attribution is not None:
            maps = compute_attributions(self._attribution, wrapped, inputs, targets, **self.attribution_options)
            return dict.fromkeys(groups, maps)
        singles = list(dict.fromkeys(group[0] for group in groups if len(group) == 1))
        maps: dict[tuple[str, ...], Tensor] = {}
        if singles:
            layer_maps = compute_layer_cams(
                self._cam_class,
                wrapped,
                [model.get_submodule(path) for path in singles],  # the wrapper holds these very modules
                inputs,
                targets,
                adapter.reshape_transform(model, singles),
            )
            maps.update({(path,): layer_map for path, layer_map in zip(singles, layer_maps, strict=True)})
        for group in groups:
            if group not in maps:
                modules = [model.get_submodule(path) for path in group]
                transform = adapter.reshape_transform(model, group)
                maps[group] = compute_cams(self._cam_class, wrapped, modules, inputs, targets, transform)
        return maps

    def _score(
        self,
        pl_module: pl.LightningModule,
        name: str,
        student_maps: Tensor,
        teacher_maps: Tensor | None,
        masks: Tensor | None,
    ) -> dict[str, np.ndarray]:
        """Logs the agreement (and pointing-game) scores of one pair of maps; returns the per-image values."""
        arrays: dict[str, np.ndarray] = {}
        if teacher_maps is not None:
            per_image = saliency_agreement_per_image(teacher_maps, student_maps, top_k=self.top_k)
            for key in SALIENCY_KEYS:
                self.log_metric(pl_module, f"{name}/{key}", per_image[key].mean())
                arrays[key] = per_image[key].numpy()
        if masks is not None:
            for role, maps in (("teacher", teacher_maps), ("student", student_maps)):
                if maps is not None:
                    hits = pointing_game_hits(maps, masks)
                    self.log_metric(pl_module, f"{name}/pointing_game/{role}", hits.float().mean())
                    arrays[f"pointing_game_{role}"] = hits.numpy()
        return arrays

    def _faithfulness_due(self, trainer: pl.Trainer) -> bool:
        every = self.faithfulness_every_n_epochs
        if every is None:
            return False
        return trainer.state.fn == "validate" or (trainer.current_epoch + 1) % every == 0

    def _faithfulness(
        self, pl_module: pl.LightningModule, role: str, wrapped: nn.Module, inputs: Tensor, maps: Tensor, targets: list
    ) -> dict[str, np.ndarray]:
        """Logs the faithfulness of one model's maps (batch means, NaNs left out); returns the per-image values."""
        scores = faithfulness_scores(wrapped, inputs, maps, probability_targets(targets), seed=self.seed)
        arrays = {}
        for key in FAITHFULNESS_KEYS:
            values = scores[key]
            if not values.isnan().all():
                self.log_metric(pl_module, f"val/faithfulness/{role}/{key}", values.nanmean())
            arrays[f"faithfulness_{role}_{key}"] = values.numpy()
        return arrays

    def _effective_target(self, truth: Tensor | None, teacher_pred: Tensor | None) -> str:
        if self.target == "teacher" and teacher_pred is None:
            return "ground_truth" if truth is not None else "student"
        if self.target == "ground_truth" and truth is None:
            return "teacher" if teacher_pred is not None else "student"
        return self.target

    def _explained(self, truth: Tensor | None, student_pred: Tensor, teacher_pred: Tensor | None) -> Tensor:
        kind = self._effective_target(truth, teacher_pred)
        if kind != self.target and not self._warned_target:
            self._warned_target = True
            rank_zero_warn(
                f"GradCAMCallback: target={self.target!r} is not available "
                f"({'no teacher' if self.target == 'teacher' else 'the batch has no class targets'}); "
                f"explaining the {kind.replace('_', ' ')} class instead"
            )
        return {"teacher": teacher_pred, "ground_truth": truth, "student": student_pred}[kind].cpu()


def _cam_class(method: str) -> Any:
    try:
        return cam_method(method)
    except ValueError as error:
        raise ConfigError(f"{error}; or an attribution method: {', '.join(ATTRIBUTION_METHODS)}") from error


def _class_names(
    adapter: SaliencyAdapter,
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    student_pred: Tensor,
    teacher_pred: Tensor | None,
    truth: Tensor | None,
) -> list[str]:
    names = adapter.category_names(pl_module)
    if names:
        return [str(name) for name in names]
    for owner in (pl_module, getattr(trainer, "datamodule", None)):
        names = getattr(owner, "class_names", None)
        if isinstance(names, Sequence) and not isinstance(names, str) and names:
            return [str(name) for name in names]
    seen = [t for t in (student_pred, teacher_pred, truth) if t is not None and t.numel()]
    count = max(int(t.max()) for t in seen) + 1 if seen else 0
    return [str(i) for i in range(count)]
