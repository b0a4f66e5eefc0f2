"""`FeatureMapCallback`: how close are student and teacher features? Attention maps and CKA on a probe batch."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn
from typing_extensions import override

from visiondistill.core.errors import ConfigError
from visiondistill.core.protocol import get_student
from visiondistill.core.recorder import LayerSpec, probe_features, resolve_layer
from visiondistill.core.teachers import explained_teacher
from visiondistill.explain.metrics import attention_cosine, attention_distance, attention_map, linear_cka
from visiondistill.explain.probe import ProbeBatch, ProbeCallback, layer_list, model_input, save_npz
from visiondistill.explain.render import comparison_grid


class FeatureMapCallback(ProbeCallback):
    """Compares student and teacher feature maps of matched layers on a fixed probe batch.

    At the end of validation (every ``every_n_epochs`` epochs of ``fit``, and at every ``validate``) it runs both
    models in eval mode without gradients on the same ``num_samples`` validation images, records the features of
    each (student layer, teacher layer) pair, and for each pair logs, under the teacher layer's name ``<stage>``
    (``-1``, ``layer3`` …):

    - ``val/attention/at_distance/<stage>``: the attention-transfer distance ``mean((q_s − q_t)²)`` (0 = same);
    - ``val/attention/at_cosine/<stage>``: the cosine ``⟨q_s, q_t⟩`` of the attention maps (1 = same);
    - ``val/attention/cka/<stage>``: linear CKA of the features over the probe batch (1 = same up to rotation and
      scale).

    It logs a grid per pair (input | teacher attention | student attention) to TensorBoard as
    ``val/attention/grid/<stage>`` and writes ``<stage>.png`` and ``maps.npz`` (``images``, ``stages``,
    ``teacher_<stage>``/``student_<stage>`` attention maps N×h×w, ``epoch``) to ``<log_dir>/attention/epoch_XXX/``.
    Train flags, gradients and random states are left as they were; only global rank zero computes and logs. Without
    a teacher it warns once at setup and does nothing.

    Args:
        student_layers: Student module paths or stage indices (``-1`` = last stage).
        teacher_layers: Teacher layers, matched pairwise with ``student_layers``; they name the logged stages.
        every_n_epochs: Compare every this many training epochs.
        num_samples: Number of probe images.
        seed: Seed of the probe-image draw.
        log_images: Log grids to TensorBoard and write PNGs (``maps.npz`` is always written).
        p: Exponent of the activations in the attention map ``mean_c |A_c|^p``.
        save_dir: Folder for ``epoch_XXX/`` outputs instead of ``<log_dir>/attention``.
        debiased_cka: Use the unbiased CKA estimator (Kornblith et al.'s reference code); plain linear CKA drifts
            towards 1 on a small probe batch with many features, even for unrelated networks.
        teacher: With several teachers (docs/teachers.md): the id of the teacher compared with; ``None``: the first.

    Raises:
        ValueError: When the layer lists are empty, of different lengths, or repeat a teacher layer.
        LayerNotFoundError: At setup, for a layer a model does not have (the message lists the valid ones).

    Example::

        >>> callback = FeatureMapCallback(student_layers=[-2, -1], teacher_layers=["layer3", -1])
        >>> callback.stage_names
        ['layer3', '-1']
    """

    folder = "attention"

    def __init__(
        self,
        student_layers: LayerSpec | Sequence[LayerSpec] = (-1,),
        teacher_layers: LayerSpec | Sequence[LayerSpec] = (-1,),
        every_n_epochs: int = 1,
        num_samples: int = 16,
        seed: int = 0,
        log_images: bool = True,
        p: float = 2,
        save_dir: str | Path | None = None,
        debiased_cka: bool = True,
        teacher: str | None = None,
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs, num_samples=num_samples, seed=seed, log_images=log_images, save_dir=save_dir
        )
        self.student_layers = layer_list(student_layers, "FeatureMapCallback", "student_layers")
        self.teacher_layers = layer_list(teacher_layers, "FeatureMapCallback", "teacher_layers")
        if not self.student_layers or len(self.student_layers) != len(self.teacher_layers):
            raise ConfigError(
                f"FeatureMapCallback: {len(self.student_layers)} student layers {self.student_layers} and "
                f"{len(self.teacher_layers)} teacher layers {self.teacher_layers}; give at least one pair, "
                "matched pairwise"
            )
        self.stage_names = [str(layer) for layer in self.teacher_layers]
        if len(set(self.stage_names)) != len(self.stage_names):
            raise ConfigError(
                f"FeatureMapCallback: teacher_layers {self.teacher_layers} repeat a layer; each pair is logged under "
                "its teacher layer, so teacher layers must differ"
            )
        if not p > 0:
            raise ConfigError(f"FeatureMapCallback: p must be > 0, got {p!r}")
        self.p = p
        self.debiased_cka = debiased_cka
        self._active = True
        self.teacher_id = teacher

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        student = get_student(pl_module)
        teacher = explained_teacher(pl_module, self.teacher_id, "FeatureMapCallback.teacher")
        for layer in self.student_layers:
            resolve_layer(student, layer, role="student")
        self._active = teacher is not None
        if teacher is None:
            rank_zero_warn(f"FeatureMapCallback: {type(pl_module).__name__} has no teacher; nothing to compare")
            return
        for layer in self.teacher_layers:
            resolve_layer(teacher, layer, role="teacher")

    @override
    def should_probe(self, trainer: pl.Trainer) -> bool:
        return self._active and super().should_probe(trainer)

    @override
    def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: ProbeBatch, out_dir: Path) -> None:
        student = get_student(pl_module)
        teacher = explained_teacher(pl_module, self.teacher_id, "FeatureMapCallback.teacher")
        images = batch.images
        # `probe_features` runs in eval mode under no_grad and restores the train flags itself.
        student_features = probe_features(student, model_input(images, student), self.student_layers, role="student")
        teacher_features = probe_features(teacher, model_input(images, teacher), self.teacher_layers, role="teacher")
        display = batch.display_images()
        arrays: dict[str, np.ndarray] = {
            "images": display.numpy(),
            "stages": np.array(self.stage_names),
            "epoch": np.int64(trainer.current_epoch),
            "global_step": np.int64(trainer.global_step),
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, s_layer, t_layer in zip(self.stage_names, self.student_layers, self.teacher_layers, strict=True):
            s_feature = student_features[s_layer].detach().float().cpu()
            t_feature = teacher_features[t_layer].detach().float().cpu()
            scores = {
                "at_distance": attention_distance(s_feature, t_feature, self.p),
                "at_cosine": attention_cosine(s_feature, t_feature, self.p),
                "cka": linear_cka(s_feature, t_feature, debiased=self.debiased_cka),
            }
            for key, value in scores.items():
                self.log_metric(pl_module, f"val/attention/{key}/{name}", value)
            s_map = attention_map(s_feature, self.p).view(s_feature.shape[0], *s_feature.shape[-2:])
            t_map = attention_map(t_feature, self.p).view(t_feature.shape[0], *t_feature.shape[-2:])
            arrays[f"student_{name}"], arrays[f"teacher_{name}"] = s_map.numpy(), t_map.numpy()
            if self.log_images:
                grid = comparison_grid(
                    display,
                    [(f"teacher {name}", t_map), (f"student {s_layer}", s_map)],
                    labels=[f"#{int(i)}" for i in batch.indices],
                    title=f"epoch {trainer.current_epoch} · attention maps (mean_c |A|^{self.p:g})",
                )
                self.save_image(trainer, f"val/attention/grid/{name}", grid, out_dir / f"{_file_name(name)}.png")
        save_npz(out_dir / "maps.npz", arrays)


def _file_name(stage: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", stage)
