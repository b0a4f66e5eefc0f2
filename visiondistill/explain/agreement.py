"""Teacher–student agreement of two trained networks on a batch, for any task with a saliency adapter.

`GradCAMCallback` measures agreement during training on a probe batch; the functions here measure it after
training, for reports that compare students trained with and without a teacher on the same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from visiondistill.core.protocol import batch_inputs
from visiondistill.core.recorder import LayerSpec, probe_features, resolve_layer
from visiondistill.core.saliency import SaliencyAdapter
from visiondistill.explain.cam import cam_method, compute_cams
from visiondistill.explain.metrics import (
    attention_cosine,
    linear_cka,
    pointing_game_hits,
    saliency_agreement,
)


def saliency_teacher_agreement(
    adapter: SaliencyAdapter,
    teacher: nn.Module,
    student: nn.Module,
    batch: Any,
    method: str = "gradcam",
    teacher_layers: Sequence[LayerSpec] = (-1,),
    student_layers: Sequence[LayerSpec] = (-1,),
    top_k: float = 0.1,
) -> dict[str, float]:
    """How far a student's saliency agrees with the teacher's on one batch, explaining the teacher's predictions.

    Both networks are explained for the same target per image (what ``adapter.predict`` gives for the teacher),
    with the same grad-cam method, at their own layers (several layers are averaged, as grad-cam does). The
    networks are put in eval mode on the CPU.

    Args:
        adapter: The task's saliency adapter (`visiondistill.core.saliency.saliency_adapter_for`).
        teacher: The teacher network.
        student: The student network.
        batch: A batch as the task's dataloader yields it (images already normalised for the networks).
        method: grad-cam method name (see `visiondistill.explain.cam.CAM_METHODS`).
        teacher_layers: Teacher layers to explain (module paths or stage indices).
        student_layers: Student layers to explain.
        top_k: Fraction of pixels for ``topk_iou``.

    Returns:
        The batch mean of each `visiondistill.explain.metrics.saliency_agreement` metric and, when the batch
        locates objects (``adapter.masks``), ``pointing_game_teacher`` and ``pointing_game_student``.
    """
    images = batch_inputs(batch).cpu()
    teacher, student = teacher.eval().cpu(), student.eval().cpu()
    cam_class = cam_method(method)
    teacher_model = adapter.cam_model(teacher).eval()
    explained = adapter.predict(teacher_model, images).cpu()
    targets = adapter.targets(explained, batch)
    maps = {}
    for role, model, layers in (("teacher", teacher, teacher_layers), ("student", student, student_layers)):
        resolved = [resolve_layer(model, layer, role=role) for layer in layers]
        transform = adapter.reshape_transform(model, [path for path, _ in resolved])
        wrapped = adapter.cam_model(model).eval()
        with torch.enable_grad():
            maps[role] = compute_cams(cam_class, wrapped, [m for _, m in resolved], images, targets, transform)
    result = {k: float(v) for k, v in saliency_agreement(maps["teacher"], maps["student"], top_k=top_k).items()}
    masks = adapter.masks(batch, *images.shape[-2:])
    if masks is not None:
        for role in ("teacher", "student"):
            result[f"pointing_game_{role}"] = float(pointing_game_hits(maps[role], masks).float().mean())
    return result


@torch.no_grad()
def attention_teacher_agreement(
    teacher: nn.Module,
    student: nn.Module,
    images: torch.Tensor,
    teacher_layers: Sequence[LayerSpec] = (-1,),
    student_layers: Sequence[LayerSpec] = (-1,),
) -> dict[str, float]:
    """Attention-map and representation agreement of a student with the teacher, per matched stage.

    Args:
        teacher: The teacher network.
        student: The student network.
        images: Input batch ``N×C×H×W``.
        teacher_layers: Teacher layers (module paths or stage indices).
        student_layers: Student layers, matched pairwise.

    Returns:
        ``at_cosine/<teacher layer>`` (1 = same attention map) and ``cka/<teacher layer>`` (debiased linear CKA of
        the features; 1 = same up to rotation and scale).

    Raises:
        ValueError: When the two layer lists differ in length.
    """
    if len(teacher_layers) != len(student_layers):
        raise ValueError(
            f"teacher_layers {list(teacher_layers)} and student_layers {list(student_layers)} must pair up one to one"
        )
    teacher, student = teacher.eval().cpu(), student.eval().cpu()
    teacher_features = probe_features(teacher, images, list(teacher_layers), role="teacher")
    student_features = probe_features(student, images, list(student_layers), role="student")
    result = {}
    for s_layer, t_layer in zip(student_layers, teacher_layers, strict=True):
        s, t = student_features[s_layer], teacher_features[t_layer]
        result[f"at_cosine/{t_layer}"] = float(attention_cosine(s, t))
        result[f"cka/{t_layer}"] = float(linear_cka(s, t, debiased=True))
    return result
