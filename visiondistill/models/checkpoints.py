"""Reading weights from local files: our own Lightning checkpoints or plain state dicts.

Nothing here touches the network: ``pretrained`` weights must already be on disk.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from visiondistill.core.errors import VisionDistillError


class CheckpointError(VisionDistillError, ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model it is loaded into."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Loads a checkpoint file on the CPU.

    Supports Lightning ``.ckpt`` files, ``torch.save``'d state dicts (``.pt``/``.pth``/``.bin``) and
    ``.safetensors``.

    Args:
        path: The file.

    Returns:
        The loaded mapping (for safetensors, the state dict itself).

    Raises:
        CheckpointError: When the file is missing or cannot be read.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        hint = " (train the teacher first: `make demo` or `visiondistill fit --config …teacher.yaml`)"
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist{hint}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # Our own Lightning checkpoints can hold plain-Python hyper-parameters that the safe loader
            # refuses; the file is a local one the user pointed at, so read it fully.
            loaded = torch.load(path, map_location="cpu", weights_only=False)
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - torch raises many types for a corrupt file
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {type(error).__name__}: {error}") from error
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(loaded).__name__}, not a state dict")
    return dict(loaded)


def extract_state_dict(checkpoint: Mapping[str, Any], prefix: str = "student.") -> dict[str, Tensor]:
    """The model weights inside a checkpoint.

    A Lightning checkpoint of a visiondistill task holds the trained network under ``student.``;
    plain state dicts (optionally wrapped in ``state_dict``/``model``) are returned as they are.

    Args:
        checkpoint: A loaded checkpoint.
        prefix: Key prefix to select and strip in Lightning checkpoints.

    Returns:
        A state dict for the bare model.
    """
    state = checkpoint
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, Tensor)}


def load_weights(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    source: str,
    role: str = "model",
    *,
    head: str | None = None,
) -> list[str]:
    """Loads a state dict strictly, turning key and shape mismatches into a readable `CheckpointError`.

    Args:
        model: The model to fill.
        state_dict: Its weights.
        source: Where the weights come from (named in messages).
        role: ``"teacher"``/``"student"`` for messages.
        head: ``None`` for models without the option (the messages then do not offer it); ``"keep"`` to load the
            classifier too (a class-count mismatch fails, naming ``head: reinit``); ``"reinit"`` to skip the
            classifier's weights (`classifier_prefix`) and keep the model's fresh initialisation of them.

    Returns:
        The keys of ``state_dict`` that were skipped (the classifier's, with ``head="reinit"``), also issued as a
        warning.

    Raises:
        CheckpointError: When keys are missing or unexpected, or shapes differ (outside a re-initialised head).
    """
    state = dict(state_dict)
    skipped: list[str] = []
    prefix = None
    if head == "reinit":
        prefix = classifier_prefix(model)
        if prefix is None:
            raise CheckpointError(
                f"{role}.head: reinit: cannot find the classifier of {type(model).__name__} (no get_classifier() and "
                f"no nn.Linear); load a checkpoint made for the task's classes instead"
            )
        skipped = [key for key in state if key.startswith(prefix + ".")]
        state = {key: value for key, value in state.items() if key not in skipped}
    own = model.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in state and not (prefix and k.startswith(prefix + "."))]
    unexpected = [k for k in state if k not in own]
    if mismatched or missing or unexpected:
        lines = [f"{role} weights in {source!r} do not fit the {role} model {type(model).__name__}:"]
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): " + "; ".join(mismatched[:5]))
            head_line = _head_mismatch(mismatched, classifier_prefix(model))
            if head_line:
                lines.append(f"  {head_line}")
                if head == "keep":
                    lines.append(
                        f"  to load everything but the classifier and re-initialise it for the task's classes, set "
                        f"{role}.head: reinit (the skipped keys are listed in a warning)"
                    )
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:5])}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:5])}")
        lines.append(f"  check that the {role}'s architecture name, num_classes and in_channels match the checkpoint")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=not skipped and prefix is None)
    if skipped:
        warnings.warn(
            f"{role}: head: reinit: {len(skipped)} classifier keys of {source!r} were not loaded and keep their "
            f"fresh initialisation: {', '.join(skipped)}",
            UserWarning,
            stacklevel=2,
        )
    return skipped


def classifier_prefix(model: nn.Module, num_classes: int | None = None) -> str | None:
    """The module path of a model's classifier: timm's ``get_classifier()``, else its last ``nn.Linear``.

    Args:
        model: The model.
        num_classes: When given, the last ``nn.Linear`` or ``nn.Conv2d`` with that many outputs is preferred over
            the last ``nn.Linear`` (a convolutional classifier such as squeezenet's).

    Returns:
        The module path (``"fc"``, ``"head.fc"``, ``"classifier.3"``), or ``None`` when none is found.
    """
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        classifier = getter()
        for path, module in model.named_modules():
            if path and module is classifier and any(True for _ in module.parameters()):
                return path
    linear = [path for path, module in model.named_modules() if path and isinstance(module, nn.Linear)]
    if num_classes is not None:
        sized = [
            path
            for path, module in model.named_modules()
            if path and isinstance(module, nn.Linear | nn.Conv2d) and module.weight.shape[0] == num_classes
        ]
        if sized:
            return sized[-1]
    return linear[-1] if linear else None


def _head_mismatch(mismatched: list[str], head_path: str | None = None) -> str | None:
    names = ("fc.weight", "head.fc.weight", "classifier.weight", "head.weight")
    if head_path:
        names = (*names, f"{head_path}.weight")
    for line in mismatched:
        if line.split(":")[0].endswith(names):
            ckpt_classes = line.split("checkpoint (")[1].split(",")[0]
            model_classes = line.split("model (")[1].split(",")[0]
            return f"the checkpoint has {ckpt_classes} classes but the model is built for {model_classes}"
    return None
