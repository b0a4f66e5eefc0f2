"""Saliency adapters: what to explain in a task's output, and where its objects are.

Both callback families explain networks the same way: the explanation callbacks (`visiondistill.explain`) run
grad-cam on an adapter's `SaliencyAdapter.cam_model` and `SaliencyAdapter.targets`, and
`visiondistill.distill.SaliencyAlignment` trains on the same score, `SaliencyAdapter.target_scores`. What differs
between tasks is small and lives in a `SaliencyAdapter`:

- `SaliencyAdapter.cam_model` — the model as grad-cam sees it (a module whose output the targets can index);
- `SaliencyAdapter.predict` / `SaliencyAdapter.ground_truth` — the category to explain per image;
- `SaliencyAdapter.targets` — grad-cam target callables for those categories;
- `SaliencyAdapter.target_scores` — the same explained score as a differentiable ``(N,)`` tensor of a raw network
  output (adapters of structured outputs override it);
- `SaliencyAdapter.masks` — object masks for the pointing game, when the batch has masks or boxes;
- `SaliencyAdapter.category_names` — the captions of the explained categories;
- `SaliencyAdapter.reshape_transform` — how a layer's activations become ``N×C×H×W`` (token layers of ViTs).

A LightningModule picks its adapter with a ``saliency_adapter`` attribute: an adapter class or instance (the task
modules name theirs, from `visiondistill.core.adapters`), or a name registered with `register_saliency_adapter`.
Classification is the default. Importing this module does not import grad-cam: target callables are plain
functions of one image's output, and the classification adapter imports grad-cam's ``ClassifierOutputTarget`` only
when it builds targets, so `visiondistill.distill` stays light for users who never explain a CAM.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from typing_extensions import override

from visiondistill.core.maps import boxes_to_masks
from visiondistill.core.protocol import ProtocolError, batch_inputs, batch_targets, output_logits
from visiondistill.core.recorder import as_feature_map, feature_stages

TargetKind = Literal["teacher", "ground_truth", "student"]
TARGET_KINDS: tuple[str, ...] = ("teacher", "ground_truth", "student")


class TokenReshape:
    """grad-cam ``reshape_transform`` that turns any layer output into ``N×C×H×W``.

    Token sequences ``N×L×C`` (ViT blocks) become a square grid without their class/register tokens (see
    `visiondistill.core.recorder.as_feature_map`); channels-last maps ``N×H×W×C`` (Swin stages) are permuted
    when their channel count is known; ``N×C×H×W`` passes through. Half-precision values become float32 (grad-cam
    copies them to numpy), so ``16-true``/``bf16-true`` runs can be explained too.

    Args:
        channels: Channel counts the hooked layers are declared to have (from ``feature_info``), if known.
    """

    def __init__(self, channels: Sequence[int] = ()) -> None:
        self.channels = frozenset(int(c) for c in channels if c)

    def __call__(self, output: object) -> Tensor:
        """Returns the layer output as ``N×C×H×W``."""
        feature = as_feature_map(output, name="CAM layer")
        if feature.ndim == 4 and feature.shape[1] not in self.channels and feature.shape[-1] in self.channels:
            feature = feature.permute(0, 3, 1, 2)
        # grad-cam turns activations and gradients into numpy arrays, which have no bfloat16.
        return feature.float() if feature.dtype in (torch.float16, torch.bfloat16) else feature


class SaliencyAdapter:
    """How one task is explained with grad-cam. Subclass it per task and register it by task name.

    Example::

        >>> @register_saliency_adapter("my_task")
        ... class MyAdapter(ClassificationSaliencyAdapter):
        ...     pass
        >>> type(saliency_adapter_for(type("M", (), {"saliency_adapter": "my_task"})())).__name__
        'MyAdapter'
        >>> del SALIENCY_ADAPTERS["my_task"]
    """

    task: ClassVar[str] = ""

    def cam_model(self, model: nn.Module) -> nn.Module:
        """The module grad-cam runs: its output must be what `targets` index (per image)."""
        return model

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        """The category a model predicts for each image, shape ``(N,)``, computed without gradients.

        Read the categories from a single ``model(images)`` call: `visiondistill.distill.SaliencyAlignment` passes a
        module that replays the teacher's output of the training step instead of running the teacher again.
        """
        raise NotImplementedError

    def ground_truth(self, batch: Any) -> Tensor | None:
        """The true category of each image, shape ``(N,)``, or ``None`` when the batch has none."""
        return None

    def targets(self, categories: Tensor, batch: Any) -> list[Callable[[Tensor], Tensor]]:
        """One grad-cam target callable per image, explaining ``categories[i]`` for image ``i``."""
        raise NotImplementedError

    def target_scores(self, output: Any, categories: Tensor, batch: Any) -> Tensor:
        """The explained score of each image, ``(N,)``, differentiable in ``output`` (used by `SaliencyAlignment`).

        ``output`` is the network's raw output on the batch (what ``training_step`` gets, not `cam_model`'s), so
        the score can be taken on the training forward's graph. The default applies `targets` to each image's
        ``output_logits(output)[i]``, which is right for any adapter whose targets index a per-image logits tensor
        (classification, segmentation). An adapter for a network with structured outputs (detection, keypoints)
        overrides it: it must return one scalar per image, built from ``output`` with differentiable operations
        only (no ``.item()``, no numpy), explaining the same thing its `targets` explain for ``categories``.
        """
        logits = output_logits(output)
        targets = self.targets(categories, batch)
        if len(targets) != logits.shape[0]:
            raise ValueError(
                f"{type(self).__name__}: {len(targets)} targets for an output batch of {logits.shape[0]} images"
            )
        return torch.stack([target(logits[i]) for i, target in enumerate(targets)])

    def masks(self, batch: Any, height: int, width: int) -> Tensor | None:
        """Bool object masks ``(N, H, W)`` for the pointing game, or ``None`` when the batch locates no object.

        The default reads a dict batch's ``masks``/``mask`` (``N×H×W`` or ``N×1×H×W``) or ``boxes`` (xyxy pixels,
        one ``M×4`` tensor per image or one ``N×4`` tensor), or a tuple batch's third item when it is an
        ``N×H×W`` mask of the images' size.
        """
        items: Mapping[str, Any] = batch if isinstance(batch, Mapping) else {}
        if not items and isinstance(batch, list | tuple) and len(batch) > 2 and isinstance(batch[2], Tensor):
            candidate = batch[2]
            if candidate.ndim == 3 and tuple(candidate.shape[-2:]) == (height, width):
                items = {"masks": candidate}
        for key in ("masks", "mask"):
            value = items.get(key)
            if isinstance(value, Tensor) and value.ndim in (3, 4):
                masks = value if value.ndim == 3 else value.amax(dim=1)
                return masks.bool().cpu()
        boxes = items.get("boxes")
        if isinstance(boxes, Tensor) and boxes.ndim == 2 and boxes.shape[-1] == 4:
            return boxes_to_masks([box.view(1, 4) for box in boxes.cpu()], height, width)
        if isinstance(boxes, list | tuple) and boxes and all(isinstance(b, Tensor) for b in boxes):
            return boxes_to_masks([b.reshape(-1, 4).cpu() for b in boxes], height, width)
        return None

    def category_names(self, pl_module: object) -> list[str] | None:
        """Captions of the categories `predict` returns, by index; the module's ``class_names`` by default."""
        names = getattr(pl_module, "class_names", None)
        return list(names) if names is not None else None

    def annotate(self, images: Tensor, batch: Any) -> Tensor:
        """The display images (``N×C×H×W`` in [0, 1]) as shown in grids; detection draws its boxes on them."""
        return images

    def reshape_transform(self, model: nn.Module, layer_paths: Sequence[str]) -> Callable[[object], Tensor]:
        """The grad-cam ``reshape_transform`` for these layers of ``model`` (a `TokenReshape`)."""
        declared = {stage.module: stage.channels for stage in feature_stages(model)}
        return TokenReshape([declared[path] for path in layer_paths if declared.get(path)])


class LogitsModel(nn.Module):
    """Wraps a classifier so that its output is the logits tensor, whatever structure the model returns."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @override
    def forward(self, x: Tensor) -> Tensor:
        return output_logits(self.model(x))


SALIENCY_ADAPTERS: dict[str, type[SaliencyAdapter]] = {}


def register_saliency_adapter(task: str) -> Callable[[type[SaliencyAdapter]], type[SaliencyAdapter]]:
    """Class decorator that registers a `SaliencyAdapter` under a task name.

    Args:
        task: The name a module's ``saliency_adapter`` attribute uses to pick it.

    Returns:
        The decorator.
    """

    def register(cls: type[SaliencyAdapter]) -> type[SaliencyAdapter]:
        cls.task = task
        SALIENCY_ADAPTERS[task] = cls
        return cls

    return register


@register_saliency_adapter("classification")
class ClassificationSaliencyAdapter(SaliencyAdapter):
    """Classification: explain a class logit (`ClassifierOutputTarget`) per image.

    Ground truth is the batch's class targets (``(images, targets)`` or a ``target``/``label`` key); the pointing
    game runs only when the batch also has masks or boxes (see `SaliencyAdapter.masks`).
    """

    @override
    def cam_model(self, model: nn.Module) -> nn.Module:
        return LogitsModel(model)

    @override
    @torch.no_grad()
    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        return output_logits(model(images)).argmax(dim=-1)

    @override
    def ground_truth(self, batch: Any) -> Tensor | None:
        try:
            targets = batch_targets(batch)
        except ProtocolError:
            return None
        if targets.ndim != 1 or targets.is_floating_point() or len(targets) != len(batch_inputs(batch)):
            return None  # one-hot, soft or multi-label targets name no single class to explain
        return targets.long()

    @override
    def targets(self, categories: Tensor, batch: Any) -> list[Callable[[Tensor], Tensor]]:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # only when a CAM is explained

        return [ClassifierOutputTarget(int(category)) for category in categories.tolist()]


def saliency_adapter_for(pl_module: pl.LightningModule | object) -> SaliencyAdapter:
    """The adapter a module asks for with its ``saliency_adapter`` attribute (classification by default).

    Args:
        pl_module: The LightningModule.

    Returns:
        An adapter instance.

    Raises:
        ValueError: When the attribute names no registered adapter.
        TypeError: When the attribute is neither a name, an adapter class nor an adapter.
    """
    choice = getattr(pl_module, "saliency_adapter", None) or "classification"
    if isinstance(choice, SaliencyAdapter):
        return choice
    if isinstance(choice, type) and issubclass(choice, SaliencyAdapter):
        return choice()
    if isinstance(choice, str):
        if choice not in SALIENCY_ADAPTERS:
            raise ValueError(
                f"{type(pl_module).__name__}.saliency_adapter is {choice!r}, which is not registered; "
                f"registered adapters: {', '.join(sorted(SALIENCY_ADAPTERS))}"
            )
        return SALIENCY_ADAPTERS[choice]()
    raise TypeError(
        f"{type(pl_module).__name__}.saliency_adapter must be a registered name, a SaliencyAdapter class or "
        f"instance, got {type(choice).__name__}"
    )
