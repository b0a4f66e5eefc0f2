"""Forward-hook feature recorders, addressed by module path or by feature-stage index.

A layer is named either by its module path inside the model (``"layer3"``, ``"stages.2"``,
``"encoder.layer4"``) or by an integer index into the model's feature stages (``-1`` is the last
stage). Stage indices are resolved through timm's ``feature_info`` (or smp's encoder, which carries
the same information); a model that declares none (torchvision, your own ``nn.Module``) has its stages
found by one dry forward (see `probe_stages`), so connectors can be sized without hard-coding channel counts.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from weakref import WeakKeyDictionary

import torch
from torch import Tensor, nn

from visiondistill.core.errors import VisionDistillError

LayerSpec = str | int


class LayerNotFoundError(VisionDistillError, ValueError):
    """A layer name or stage index that does not exist in the model."""


@dataclass(frozen=True)
class FeatureStage:
    """One feature stage of a model: where it lives and what it produces.

    Attributes:
        index: Position in the model's stage list (non-negative).
        module: Module path of the stage, usable with ``model.get_submodule``.
        channels: Number of output channels, when the model declares it.
        reduction: Spatial reduction factor relative to the input, when declared.
    """

    index: int
    module: str
    channels: int | None = None
    reduction: int | None = None


def feature_stages(model: nn.Module) -> list[FeatureStage]:
    """Lists the feature stages of a model: declared (timm ``feature_info``, an smp encoder) or found by probing.

    Args:
        model: A timm model (classifier or ``features_only``), an smp model, any module with a
            ``feature_info`` attribute, or any other image model (torchvision, your own ``nn.Module``), whose
            stages `probe_stages` finds with one dry forward.

    Returns:
        The stages in order, shallow to deep; empty when the model declares none and the probe finds none.
    """
    declared = _declared_stages(model)
    if declared is not None:
        return declared
    return probe_stages(model)[0]


def _declared_stages(model: nn.Module) -> list[FeatureStage] | None:
    info = getattr(model, "feature_info", None)
    if info is not None:
        dicts = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        return [FeatureStage(i, d["module"], d.get("num_chs"), d.get("reduction")) for i, d in enumerate(dicts)]
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, nn.Module) and encoder is not model:
        inner = _declared_stages(encoder)
        if inner is not None:
            return [FeatureStage(s.index, f"encoder.{s.module}", s.channels, s.reduction) for s in inner]
    return None


#: Probe results per model (stages, or the reason there are none): the dry forward runs once per model.
_PROBED: WeakKeyDictionary[nn.Module, tuple[list[FeatureStage], str]] = WeakKeyDictionary()

#: Input sizes tried by the probe, in order: 64 px is cheap and leaves a /32 network a 2×2 last stage (global
#: pooling's 1×1 is not mistaken for a stage); 224 for networks that need ImageNet's size; 32 for small-image nets.
PROBE_SIZES = (64, 224, 32)

_ADAPTIVE_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@torch.no_grad()
def probe_stages(model: nn.Module) -> tuple[list[FeatureStage], str]:
    """Finds the feature stages of a model that declares none, with one dry forward (cached per model).

    The rule: run the model in eval mode (train flags restored) on a zero image (``64×64``, else ``224`` or ``32``
    when that fails; input channels from the first ``Conv2d``) with a forward hook on every submodule, and keep the
    square ``N×C×H×W`` outputs on the main path: larger than ``1×1`` (this drops global pooling), not from adaptive
    pooling, and not exceeded in area by any later square output (this drops squeeze-excitation and other side
    branches). Each distinct spatial size is one stage, shallow to deep. Its module is, among the modules with an
    output at that size, the shallowest (fewest dots in its path) that produced the last such output; a module
    called at several sizes (a shared activation) is skipped, since its recorded output would be ambiguous. For
    torchvision's resnet18 this gives ``relu`` (/2), ``layer1`` … ``layer4`` (/32), as timm's ``feature_info`` does
    for timm's resnet18; for mobilenet_v3_small ``features.0``, ``features.1``, ``features.3``, ``features.8`` and
    ``features`` (/32). Models whose resolution grows again (decoders) or channels-last outputs get no useful
    stages this way: name their layers by module path.

    Args:
        model: The model.

    Returns:
        The stages (empty when none were found) and, when empty, the reason (for error messages).
    """
    if model in _PROBED:
        return _PROBED[model]
    result = _probe(model)
    _PROBED[model] = result
    return result


def _probe(model: nn.Module) -> tuple[list[FeatureStage], str]:
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is None:
        return [], "it has no Conv2d layer, so no spatial feature maps to find"
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    events: list[tuple[str, tuple[int, int], int, int]] = []  # (path, (H, W), channels, id of the output)
    keep: list[Tensor] = []  # holds every output, so no id is reused during the forward

    def hook_for(path: str):
        def hook(module: nn.Module, _inputs: tuple, output: object) -> None:
            # Adaptive pooling is a head: on a small probe image it can even enlarge the map (vgg's 7×7 pool).
            if isinstance(output, Tensor) and output.ndim == 4 and not isinstance(module, _ADAPTIVE_POOLS):
                keep.append(output)
                events.append((path, (int(output.shape[-2]), int(output.shape[-1])), int(output.shape[1]), id(output)))

        return hook

    handles = [module.register_forward_hook(hook_for(path)) for path, module in model.named_modules() if path]
    modes = {module: module.training for module in model.modules()}
    model.eval()
    failure = ""
    try:
        for size in PROBE_SIZES:
            events.clear()
            keep.clear()
            try:
                model(torch.zeros(1, first_conv.in_channels, size, size, device=device, dtype=dtype))
            except Exception as error:  # noqa: BLE001 - any model may refuse a size; the next one is tried
                failure = f"a dry forward on a {first_conv.in_channels}×{size}×{size} input failed ({error})"
                continue
            stages = _stages_from_events(events, size)
            return stages, "" if stages else "a dry forward produced no spatial feature maps larger than 1×1"
        return [], failure
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
        keep.clear()


def _stages_from_events(events: list[tuple[str, tuple[int, int], int, int]], size: int) -> list[FeatureStage]:
    sizes_of: dict[str, set[tuple[int, int]]] = {}
    last_call: dict[str, int] = {}
    for position, (path, hw, _channels, _id) in enumerate(events):
        sizes_of.setdefault(path, set()).add(hw)
        last_call[path] = position
    # Main path: square maps larger than 1×1 that nothing produced later exceeds (side branches such as
    # squeeze-excitation shrink and come back; channels-last N×H×W×C outputs are not square).
    later_max = 0
    main = [False] * len(events)
    for position in range(len(events) - 1, -1, -1):
        height, width = events[position][1]
        if height == width:
            main[position] = height * width >= later_max and height > 1
            later_max = max(later_max, height * width)
    levels: list[tuple[int, int]] = []
    for position, (_path, hw, _channels, _id) in enumerate(events):
        if main[position] and hw not in levels:
            levels.append(hw)
    stages = []
    for hw in levels:
        # The last output at this size from the shallowest module that gives one: a whole block or stage rather than
        # a layer inside the next block that downsamples (its expansion convolution still runs at this size).
        candidates = [
            (position, path, channels)
            for position, (path, event_hw, channels, _id) in enumerate(events)
            if main[position] and event_hw == hw and len(sizes_of[path]) == 1 and last_call[path] == position
        ]
        if not candidates:
            continue
        depth = min(path.count(".") for _position, path, _channels in candidates)
        _position, path, channels = [c for c in candidates if c[1].count(".") == depth][-1]
        stages.append(FeatureStage(len(stages), path, channels, max(size // hw[0], 1)))
    return stages


def resolve_layer(model: nn.Module, layer: LayerSpec, *, role: str = "model") -> tuple[str, nn.Module]:
    """Finds the module a layer spec names.

    Args:
        model: The model to search.
        layer: A module path or an integer stage index (negative counts from the end).
        role: Word used in error messages (``"student"``, ``"teacher"``).

    Returns:
        The module path and the module itself.

    Raises:
        LayerNotFoundError: When the path or index does not exist; the message lists valid choices.
    """
    if isinstance(layer, bool):
        raise LayerNotFoundError(f"{role} layer {layer!r}: expected a module path or a stage index, got a bool")
    if isinstance(layer, int):
        stages = feature_stages(model)
        if not stages:
            reason = probe_stages(model)[1] or "none were found"
            raise LayerNotFoundError(
                f"{role} layer {layer}: {type(model).__name__} declares no feature stages (no `feature_info`) and "
                f"probing found none: {reason}; so stage indices cannot be used; name the layer by module path "
                f"instead, e.g. {_suggest_paths(model, '')}"
            )
        if not -len(stages) <= layer < len(stages):
            listing = ", ".join(f"{s.index} ({s.module}, {s.channels} ch, /{s.reduction})" for s in stages)
            raise LayerNotFoundError(
                f"{role} stage index {layer} is out of range for {type(model).__name__}: "
                f"valid indices are {-len(stages)}..{len(stages) - 1}: {listing}"
            )
        path = stages[layer].module
    else:
        path = str(layer)
    try:
        return path, model.get_submodule(path)
    except AttributeError:
        raise LayerNotFoundError(
            f"{role} layer {path!r} not found in {type(model).__name__}. "
            f"Closest module paths: {_suggest_paths(model, path)}. "
            f"Feature stages (usable as integer indices): {_stage_listing(model)}"
        ) from None


def _suggest_paths(model: nn.Module, path: str, limit: int = 8) -> str:
    names = [name for name, _ in model.named_modules() if name]
    matches = difflib.get_close_matches(path, names, n=limit, cutoff=0.3) if path else []
    if not matches:
        matches = [name for name in names if name.count(".") == 0][:limit]
    return ", ".join(repr(m) for m in matches) or "(none)"


def _stage_listing(model: nn.Module) -> str:
    stages = feature_stages(model)
    if not stages:
        return "(none declared)"
    return ", ".join(f"{s.index}={s.module!r}" for s in stages)


def as_feature_map(output: object, *, name: str = "layer") -> Tensor:
    """Turns a hooked module's output into an ``N×C×H×W`` feature map.

    Token sequences ``N×L×C`` from vision transformers are reshaped to a square grid, dropping
    leading class/register tokens.

    Args:
        output: The module's forward output (a tensor, or a tuple/list whose first item is one).
        name: Layer name for error messages.

    Returns:
        The feature map.

    Raises:
        ValueError: When the output cannot be read as a spatial feature map.
    """
    if isinstance(output, list | tuple) and output:
        output = output[0]
    if not isinstance(output, Tensor):
        raise ValueError(f"layer {name!r} returns {type(output).__name__}, not a tensor; choose another layer")
    if output.ndim == 4:
        return output
    if output.ndim == 3:
        n, length, channels = output.shape
        side = int(length**0.5)
        while side * side > length:
            side -= 1
        extra = length - side * side
        if side == 0 or extra > 8:
            raise ValueError(f"layer {name!r} outputs tokens of shape {tuple(output.shape)} that form no square grid")
        grid = output[:, extra:, :].transpose(1, 2)
        return grid.reshape(n, channels, side, side)
    raise ValueError(
        f"layer {name!r} outputs shape {tuple(output.shape)}; a feature map needs N×C×H×W (or N×L×C tokens)"
    )


class FeatureRecorder:
    """Records the outputs of named layers of one model with forward hooks.

    The recorder keeps only the latest output of each layer, so after a forward pass
    ``recorder[layer]`` is the feature map of that pass. Hooks stay attached until ``remove``.

    Args:
        model: The model to record from.
        layers: Module paths or stage indices.
        role: Word used in error messages (``"student"``, ``"teacher"``).
        detach: Store the outputs detached from autograd. A frozen teacher's features are constants; a teacher
            forward run with gradients enabled (``SaliencyAlignment``'s CAM forward) must not hand another term a
            feature map whose graph that forward frees.

    Raises:
        LayerNotFoundError: When a layer does not exist.

    Example::

        >>> import timm, torch
        >>> model = timm.create_model("test_resnet", num_classes=3)
        >>> recorder = FeatureRecorder(model, [-1, "layer2"])
        >>> _ = model(torch.randn(2, 3, 32, 32))
        >>> tuple(recorder[-1].shape), tuple(recorder["layer2"].shape)
        ((2, 96, 1, 1), (2, 48, 4, 4))
        >>> recorder.remove()
    """

    def __init__(
        self, model: nn.Module, layers: Sequence[LayerSpec], *, role: str = "model", detach: bool = False
    ) -> None:
        self.role = role
        self.detach = detach
        self.paths: dict[LayerSpec, str] = {}
        self._outputs: dict[str, object] = {}
        self._handles = []
        for layer in layers:
            path, module = resolve_layer(model, layer, role=role)
            self.paths[layer] = path
            if path not in self._outputs:
                self._outputs[path] = None
                self._handles.append(module.register_forward_hook(self._make_hook(path)))

    def _make_hook(self, path: str):
        def hook(_module: nn.Module, _inputs: tuple, output: object) -> None:
            self._outputs[path] = _detached(output) if self.detach else output

        return hook

    def __getitem__(self, layer: LayerSpec) -> Tensor:
        path = self.paths[layer]
        output = self._outputs[path]
        if output is None:
            raise RuntimeError(
                f"no {self.role} output recorded for layer {path!r}: the model's forward did not run through it "
                "(is the layer used in forward, and did the forward run since the last clear?)"
            )
        return as_feature_map(output, name=f"{self.role}.{path}")

    def clear(self) -> None:
        """Drops the stored outputs (and with them their autograd graphs)."""
        for path in self._outputs:
            self._outputs[path] = None

    def remove(self) -> None:
        """Detaches the hooks and drops the stored outputs."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()


def _detached(output: object) -> object:
    """``output`` with every tensor in it (also inside tuples, lists and dicts) detached from autograd."""
    if isinstance(output, Tensor):
        return output.detach()
    if isinstance(output, tuple | list):
        return type(output)(_detached(item) for item in output)
    if isinstance(output, dict):
        return {key: _detached(item) for key, item in output.items()}
    return output


@contextmanager
def recording(model: nn.Module, layers: Sequence[LayerSpec], *, role: str = "model") -> Iterator[FeatureRecorder]:
    """Context manager around `FeatureRecorder` that always removes its hooks."""
    recorder = FeatureRecorder(model, layers, role=role)
    try:
        yield recorder
    finally:
        recorder.remove()


@torch.no_grad()
def probe_features(model: nn.Module, inputs: Tensor, layers: Sequence[LayerSpec], *, role: str = "model") -> dict:
    """Runs one forward in eval mode and returns the feature map of each layer (train flags restored).

    Args:
        model: The model.
        inputs: A small input batch.
        layers: Module paths or stage indices.
        role: Word used in error messages.

    Returns:
        A dict from each layer spec to its feature map.
    """
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with recording(model, layers, role=role) as recorder:
            model(inputs)
            return {layer: recorder[layer] for layer in layers}
    finally:
        for module, mode in modes.items():
            module.training = mode
