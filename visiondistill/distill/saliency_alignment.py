"""`SaliencyAlignment`: make the student's Grad-CAM look like the teacher's, as a training loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from visiondistill.core.callback import DistillationCallback
from visiondistill.core.errors import ConfigError
from visiondistill.core.maps import gradcam_map
from visiondistill.core.protocol import batch_inputs, example_inputs, get_student, get_teacher, module_device
from visiondistill.core.recorder import LayerSpec, probe_features, resolve_layer
from visiondistill.core.saliency import SaliencyAdapter, saliency_adapter_for
from visiondistill.distill import losses

SaliencyDistance = Literal["cosine", "mse"]
SaliencyTarget = Literal["teacher", "ground_truth"]


class SaliencyAlignment(DistillationCallback):
    """Aligns a differentiable Grad-CAM of the student with the teacher's Grad-CAM (held fixed).

    For each training batch and each image, the explained category is the teacher's prediction (or the true one),
    the explained score comes from the task's saliency adapter
    (`visiondistill.core.saliency.SaliencyAdapter.target_scores`: a class logit in classification, a class's
    logits summed over its mask in segmentation), and the term is
    ``saliency_alignment_loss(CAM_s, CAM_t, distance)`` (`visiondistill.distill.losses`) with
    ``CAM = relu(Σ_c mean_hw(∂score/∂A_c) · A_c)`` (`visiondistill.distill.gradcam_map`) at one layer of each
    network; the student's map is resized to the teacher's.

    The student side uses the training step's own forward: the student feature ``A_s`` is recorded by a forward
    hook and ``∂score/∂A_s`` is taken with ``torch.autograd.grad(..., create_graph=True)`` from the training
    ``student_out``, so no second student forward runs (BatchNorm statistics move once per step, as without the
    callback) and the term's gradient reaches the student's parameters through both ``A_s`` and the channel
    weights. ``autograd.grad`` only returns gradients — nothing is accumulated in ``.grad`` — and adds no
    collective under DDP: the term is backpropagated by the ordinary ``loss.backward()``. The recording hook
    returns a copy of the layer's output, so a later in-place operation cannot corrupt the recorded activation.

    Cost: the teacher ran under ``no_grad`` in ``training_step``, so the callback runs the frozen teacher once more
    with autograd enabled from the teacher layer on (its output there becomes a fresh leaf, so nothing before it
    is recorded), backpropagates the teacher score to that layer only, and the student's backward becomes a
    double backward through the layers after ``student_layer``. Expect roughly one more teacher forward per step
    plus the double backward; ``benchmarks/saliency_alignment.py`` measures it.

    Args:
        student_layer: Student module path or stage index (``-1`` = last stage).
        teacher_layer: Teacher module path or stage index.
        distance: ``"cosine"`` (1 − cosine similarity of the maps) or ``"mse"`` (MSE of min-max normalised maps).
        target: Category explained: the teacher's prediction (``"teacher"``) or the batch's ground truth
            (``"ground_truth"``; falls back to the teacher's prediction, with a warning, when the batch has none).
        weight: Multiplier of the term.
        name: Log name (default ``saliency_alignment``).

    Raises:
        ValueError: For an unknown ``distance`` or ``target``.
        LayerNotFoundError: At setup, for a layer a model does not have (the message lists valid ones).

    Example::

        >>> callback = SaliencyAlignment(student_layer=-2, teacher_layer=-2, distance="mse")
        >>> callback.name, callback.distance
        ('saliency_alignment', 'mse')
    """

    default_name = "saliency_alignment"

    def __init__(
        self,
        student_layer: LayerSpec = -1,
        teacher_layer: LayerSpec = -1,
        distance: SaliencyDistance = "cosine",
        target: SaliencyTarget = "teacher",
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(weight=weight, name=name)
        if distance not in ("cosine", "mse"):
            raise ConfigError(f"SaliencyAlignment: distance must be 'cosine' or 'mse', got {distance!r}")
        if target not in ("teacher", "ground_truth"):
            raise ConfigError(f"SaliencyAlignment: target must be 'teacher' or 'ground_truth', got {target!r}")
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.distance, self.target = distance, target
        self._adapter: SaliencyAdapter | None = None
        self._student_path = self._teacher_path = ""
        self._student_module: nn.Module | None = None
        self._teacher_module: nn.Module | None = None
        self._handle: Any = None
        self._recorded: Tensor | None = None
        self._warned_target = False

    # -- setup ------------------------------------------------------------------------------------

    @override
    def setup_distillation(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        student, teacher = get_student(pl_module), get_teacher(pl_module, required=True, who="SaliencyAlignment")
        self._student_path, self._student_module = resolve_layer(student, self.student_layer, role="student")
        self._teacher_path, self._teacher_module = resolve_layer(teacher, self.teacher_layer, role="teacher")
        self._adapter = saliency_adapter_for(pl_module)
        # A dry forward: a layer whose output is no feature map fails now, with its name, not mid-epoch.
        inputs = example_inputs(trainer, pl_module, stage)[:2].to(module_device(student))
        probe_features(student, inputs, [self.student_layer], role="student")
        probe_features(teacher, inputs, [self.teacher_layer], role="teacher")
        self._handle = self._student_module.register_forward_hook(self._record)

    def _record(self, module: nn.Module, args: object, output: object) -> object:
        if not torch.is_grad_enabled():
            return None
        first = output[0] if isinstance(output, list | tuple) and output else output
        if not isinstance(first, Tensor) or not first.is_floating_point():
            return None
        self._recorded = first
        copy = first.clone()  # later in-place ops change the copy, never the recorded activation
        if isinstance(output, tuple):
            return (copy, *output[1:])
        if isinstance(output, list):
            return [copy, *output[1:]]
        return copy

    # -- the term ---------------------------------------------------------------------------------

    @override
    def compute_loss(self, pl_module: pl.LightningModule, batch: Any, student_out: Any, teacher_out: Any) -> Tensor:
        assert self._adapter is not None and self._teacher_module is not None, "setup() has not run"
        if self._recorded is None or not self._recorded.requires_grad:
            raise RuntimeError(
                f"SaliencyAlignment: no student activation with gradients was recorded at {self._student_path!r} "
                "in this training step; the student's forward must run through that layer with gradients enabled"
            )
        student, teacher = get_student(pl_module), get_teacher(pl_module, required=True, who="SaliencyAlignment")
        images = batch_inputs(batch)
        categories = self.categories(batch, teacher_out, images, teacher)
        teacher_cam = self.teacher_cam(teacher, images, categories, batch)
        score = self._adapter.target_scores(student_out, categories, batch)
        activations = self._recorded
        try:
            (gradients,) = torch.autograd.grad(score.sum(), activations, create_graph=True)
        except RuntimeError as error:
            raise RuntimeError(
                f"SaliencyAlignment: the student's target score does not depend on layer {self._student_path!r} "
                f"({error}); choose a layer the output is computed from"
            ) from error
        transform = self._adapter.reshape_transform(student, [self._student_path])
        # float32 under mixed precision too (the recorded activation, and so its gradient, are bf16/fp16 there)
        student_cam = gradcam_map(transform(activations).float(), transform(gradients).float())
        return losses.saliency_alignment_loss(student_cam, teacher_cam.float(), distance=self.distance)

    def categories(self, batch: Any, teacher_out: Any, images: Tensor, teacher: nn.Module | None = None) -> Tensor:
        """The category explained per image: the teacher's prediction, read from ``teacher_out`` (no forward).

        ``teacher`` lends the adapter its methods (e.g. a detector's post-processing of ``teacher_out``).
        """
        assert self._adapter is not None, "setup() has not run"
        if self.target == "ground_truth":
            truth = self._adapter.ground_truth(batch)
            if truth is not None:
                return truth
            if not self._warned_target:
                self._warned_target = True
                rank_zero_warn("SaliencyAlignment: the batch has no ground truth; explaining the teacher's prediction")
        return self._adapter.predict(_Replay(teacher_out, source=teacher), images)

    def teacher_cam(self, teacher: nn.Module, images: Tensor, categories: Tensor, batch: Any) -> Tensor:
        """The teacher's Grad-CAM at ``teacher_layer`` (detached), from one forward with autograd from that layer on."""
        assert self._adapter is not None and self._teacher_module is not None, "setup() has not run"
        leaves: list[Tensor] = []
        handle = self._teacher_module.register_forward_hook(_start_graph(leaves), prepend=True)
        try:
            with torch.enable_grad():
                output = teacher(images.detach())
                if not leaves:
                    raise RuntimeError(
                        f"SaliencyAlignment: teacher layer {self._teacher_path!r} returned no floating-point tensor"
                    )
                score = self._adapter.target_scores(output, categories, batch)
                (gradients,) = torch.autograd.grad(score.sum(), leaves[0])
        finally:
            handle.remove()
        transform = self._adapter.reshape_transform(teacher, [self._teacher_path])
        return gradcam_map(transform(leaves[0].detach()), transform(gradients)).detach()

    # -- cleanup ----------------------------------------------------------------------------------

    @override
    def clear(self) -> None:
        self._recorded = None

    @override
    def remove_hooks(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.clear()


class _Replay(nn.Module):
    """A "model" whose output is already known: lets an adapter's ``predict`` read the teacher's training output.

    Other attributes come from the real network (``source``), so an adapter can call, say, a detector's
    ``postprocess`` on the replayed output.
    """

    def __init__(self, output: Any, source: nn.Module | None = None) -> None:
        super().__init__()
        self.output = output
        object.__setattr__(self, "_source", source)  # not registered: the replay owns no parameters

    @override
    def forward(self, *args: Any) -> Any:
        return self.output

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            source = object.__getattribute__(self, "_source")
            if source is None:
                raise
            return getattr(source, name)


def _start_graph(leaves: list[Tensor]) -> Callable[[nn.Module, object, object], object]:
    """A forward hook that makes a layer's output a new autograd leaf (the network before it is not recorded)."""

    def hook(module: nn.Module, args: object, output: object) -> object:
        first = output[0] if isinstance(output, list | tuple) and output else output
        if not isinstance(first, Tensor) or not first.is_floating_point():
            return None
        leaf = first.detach().requires_grad_(True)
        leaves.append(leaf)
        copy = leaf.clone()  # a non-leaf, as the output was: the next layer may modify it in place
        if isinstance(output, tuple):
            return (copy, *output[1:])
        if isinstance(output, list):
            return [copy, *output[1:]]
        return copy

    return hook
