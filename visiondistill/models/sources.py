"""Where a network comes from: timm names, torchvision names, Hugging Face hub ids and any ``nn.Module`` by import path.

Nothing here touches the network. Pretrained weights of timm models and hub ids are read from the local Hugging Face
cache (``HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``), those of torchvision models from torch's hub
cache (``$TORCH_HOME/hub/checkpoints``); when a file is absent the error names the id, the file and the folder to
put it in.

- timm (the default): ``name: resnet18``; ``pretrained: true`` reads the weights' hub id from the HF cache.
- torchvision: ``name: torchvision/resnet18`` (or ``source: torchvision``); ``pretrained: true`` reads
  ``$TORCH_HOME/hub/checkpoints/<file of the DEFAULT weights>``.
- Hugging Face hub (timm models): ``name: hf-hub:timm/resnet18.a1_in1k``; the repo's ``config.json`` (and, with
  ``pretrained: true``, ``model.safetensors``) must be in the HF cache.
- any module: ``model_class: my_pkg.MyNet`` with ``model_args``; weights from ``checkpoint:``. (Not ``class_path``/
  ``init_args``: LightningCLI reserves those keys for the objects it builds.)
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from visiondistill.core.errors import ConfigError
from visiondistill.models.checkpoints import CheckpointError

__all__ = ["SOURCES", "build_from_model_class", "build_network", "split_source", "timm_pretrained"]

#: The values of a spec's ``source``.
SOURCES = ("timm", "torchvision", "hf-hub")

_PREFIXES = {"torchvision/": "torchvision", "hf-hub:": "hf-hub"}


def split_source(name: str, source: str | None, role: str = "model") -> tuple[str, str]:
    """The source and the bare name of a model name, from ``source`` or a name prefix.

    Args:
        name: ``resnet18``, ``torchvision/resnet18``, ``hf-hub:timm/resnet18.a1_in1k`` …
        source: ``"timm"``, ``"torchvision"``, ``"hf-hub"`` or ``None`` (read the prefix; no prefix is timm).
        role: ``"teacher"``/``"student"`` for messages.

    Returns:
        ``(source, name without its prefix)``.

    Raises:
        ConfigError: On an unknown source, or a prefix that contradicts ``source``.
    """
    if source is not None and source not in SOURCES:
        raise ConfigError(f"{role}.source {source!r} is unknown; valid sources: {', '.join(SOURCES)} (or model_class)")
    for prefix, prefixed_source in _PREFIXES.items():
        if name.startswith(prefix):
            if source not in (None, prefixed_source):
                raise ConfigError(
                    f"{role}: name {name!r} says source {prefixed_source!r} but {role}.source is {source!r}; "
                    "drop one of them"
                )
            return prefixed_source, name[len(prefix) :]
    return source or "timm", name


def build_network(
    source: str,
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    pretrained: bool,
    kwargs: dict[str, Any],
    role: str = "model",
) -> tuple[nn.Module, dict[str, torch.Tensor] | None, str | None]:
    """Builds a classifier from a named source.

    Args:
        source: One of `SOURCES`.
        name: The bare name (see `split_source`).
        num_classes: Output classes of the network.
        in_channels: Input channels.
        pretrained: Read the source's pretrained weights from the local cache.
        kwargs: Extra keyword arguments of the source's constructor.
        role: ``"teacher"``/``"student"`` for messages.

    Returns:
        The model, and for torchvision's pretrained weights the state dict still to load with its file (timm loads
        its own), else ``(model, None, None)``.

    Raises:
        ConfigError: On an unknown name, a hub id absent from the cache, or channels the source cannot take.
        CheckpointError: When pretrained weights are not in the local cache.
    """
    if source == "torchvision":
        return _torchvision(name, num_classes, in_channels, pretrained, kwargs, role)
    if source == "hf-hub":
        return _hf_hub(name, num_classes, in_channels, pretrained, kwargs, role), None, None
    return _timm(name, num_classes, in_channels, pretrained, kwargs, role), None, None


def build_from_model_class(
    model_class: str, model_args: dict[str, Any], num_classes: int, in_channels: int, role: str = "model"
) -> nn.Module:
    """Builds any ``nn.Module`` by its import path, passing ``num_classes``/``in_channels`` where it takes them.

    ``num_classes`` is passed when ``model_args`` does not set it and the constructor has a parameter of that name or
    takes ``**kwargs`` (torchvision's builder functions); ``in_channels`` (or timm's ``in_chans``) when it has a
    parameter of that name. When ``num_classes`` could not be passed, the last ``nn.Linear`` must already have the
    task's number of outputs.

    Raises:
        ConfigError: When the module or class cannot be imported, is not an ``nn.Module``, or refuses ``model_args``.
    """
    module_name, _, class_name = model_class.rpartition(".")
    try:
        target = getattr(importlib.import_module(module_name), class_name) if module_name else None
    except ImportError as error:
        raise ConfigError(
            f"{role}.model_class {model_class!r}: cannot import module {module_name!r} ({error}); give the full "
            "import path of an nn.Module subclass, e.g. my_package.models.MyNet, importable from the working folder"
        ) from None
    except AttributeError:
        target = None
    if target is None:
        raise ConfigError(
            f"{role}.model_class {model_class!r}: module {module_name or '(none)'!r} has no {class_name!r}; give the "
            "full import path of an nn.Module subclass, e.g. my_package.models.MyNet"
        )
    args = dict(model_args)
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if "num_classes" in parameters or takes_kwargs:  # torchvision's builders pass **kwargs on to the model
        args.setdefault("num_classes", num_classes)
    for channels_name in ("in_channels", "in_chans"):
        if channels_name in parameters:
            args.setdefault(channels_name, in_channels)
    try:
        model = target(**args)
    except TypeError as error:
        raise ConfigError(f"{role}.model_class {model_class!r} refused model_args {sorted(args)}: {error}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{role}.model_class {model_class!r} built a {type(model).__name__}, not an nn.Module")
    if "num_classes" not in args:
        linear = [(path, m) for path, m in model.named_modules() if isinstance(m, nn.Linear)]
        if linear and linear[-1][1].out_features != num_classes:
            raise ConfigError(
                f"{role}.model_class {model_class!r}: its last linear layer {linear[-1][0]!r} has "
                f"{linear[-1][1].out_features} outputs but the task has {num_classes} classes, and its constructor "
                f"takes no num_classes; set the right argument in {role}.model_args"
            )
    return model


def _timm(name: str, num_classes: int, in_channels: int, pretrained: bool, kwargs: dict, role: str) -> nn.Module:
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:10]
        raise ConfigError(
            f"{role}: unknown timm model {name!r}; similar names: {close or 'none'}. Other sources: "
            "'torchvision/<name>', 'hf-hub:<repo id>' or model_class"
        )
    return timm.create_model(
        name,
        num_classes=num_classes,
        in_chans=in_channels,
        **timm_pretrained(name, pretrained, role),
        **kwargs,
    )


def timm_pretrained(name: str, pretrained: bool, role: str = "model") -> dict[str, Any]:
    """The ``timm.create_model`` arguments that load a timm model's pretrained weights from the local cache only.

    timm itself would download weights missing from the cache; here their file is looked up in the Hugging Face
    cache first and handed to timm as ``pretrained_cfg_overlay={"file": …}``, so timm reads that file (and still
    adapts the classifier and the input convolution as usual).

    Args:
        name: A timm model name (with or without a pretrained tag, ``resnet18.a1_in1k``).
        pretrained: Whether pretrained weights are wanted.
        role: ``"teacher"``/``"student"`` for messages.

    Returns:
        ``{"pretrained": False}``, or ``pretrained=True`` with the overlay naming the cached file.

    Raises:
        CheckpointError: When the weights are not in the local cache (naming the hub id and the folder).
    """
    if not pretrained:
        return {"pretrained": False}
    config = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(config, "hf_hub_id", None)
    if not hub_id:
        raise CheckpointError(f"{role}: timm model {name!r} has no pretrained weights on the hub; use checkpoint:")
    overlay = {"file": _hub_weights(hub_id, role, f"timm model {name!r}"), "source": ""}
    return {"pretrained": True, "pretrained_cfg_overlay": overlay}


def _hf_hub(repo: str, num_classes: int, in_channels: int, pretrained: bool, kwargs: dict, role: str) -> nn.Module:
    config = json.loads(Path(_cached(repo, "config.json", role, f"hub model 'hf-hub:{repo}'")).read_text())
    architecture = config.get("architecture")
    if not architecture or not timm.is_model(architecture):
        raise ConfigError(
            f"{role}: hub model 'hf-hub:{repo}' names architecture {architecture!r} in its config.json, which is "
            "not a timm model; only timm models are read from the hub"
        )
    pretrained_cfg = dict(config.get("pretrained_cfg") or {})
    pretrained_cfg.update(num_classes=config.get("num_classes", 1000), architecture=architecture, source="")
    if pretrained:
        pretrained_cfg["file"] = _hub_weights(repo, role, f"hub model 'hf-hub:{repo}'")
    return timm.create_model(
        architecture,
        pretrained=pretrained,
        pretrained_cfg=pretrained_cfg,
        num_classes=num_classes,
        in_chans=in_channels,
        **{**dict(config.get("model_args") or {}), **kwargs},
    )


def _hub_weights(repo: str, role: str, what: str) -> str:
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = _cached(repo, filename, role, what, required=False)
        if path is not None:
            return path
    raise CheckpointError(_absent_message(repo, "model.safetensors (or pytorch_model.bin)", role, what))


def _cached(repo: str, filename: str, role: str, what: str, required: bool = True) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = repo.partition("@")
    try:
        path = try_to_load_from_cache(repo_id, filename, revision=revision or None)
    except ValueError as error:  # a malformed repo id
        raise ConfigError(f"{role}: {what}: {error}; a hub id looks like 'hf-hub:timm/resnet18.a1_in1k'") from None
    if isinstance(path, str):
        return path
    if required:
        raise ConfigError(_absent_message(repo_id, filename, role, what))
    return None


def _absent_message(repo: str, filename: str, role: str, what: str) -> str:
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    return (
        f"{role}: {what}: {filename} of {repo!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}); "
        f"nothing is downloaded at run time. On a machine with network run `hf download {repo}` and copy its cache "
        f"folder {folder.name} to {folder.parent} (or point HF_HUB_CACHE at a cache that has it); or save the "
        f"weights to a file and set {role}.checkpoint"
    )


def _torchvision(
    name: str, num_classes: int, in_channels: int, pretrained: bool, kwargs: dict, role: str
) -> tuple[nn.Module, dict[str, torch.Tensor] | None, str | None]:
    import torchvision.models as tv

    names = tv.list_models(module=tv)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=8, cutoff=0.4)
        raise ConfigError(
            f"{role}: unknown torchvision classification model {name!r}; close names: {close or 'none'} "
            f"(torchvision.models.list_models() lists all)"
        )
    if in_channels != 3:
        raise ConfigError(
            f"{role}: torchvision model {name!r} takes 3 input channels, not {in_channels}; use a timm model "
            "(in_channels adapts its first convolution) or your own model_class"
        )
    model = tv.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if not pretrained:
        return model, None, None
    weights = tv.get_model_weights(name).DEFAULT
    folder = Path(torch.hub.get_dir()) / "checkpoints"  # torch.hub honours TORCH_HOME
    path = folder / Path(weights.url).name
    if not path.is_file():
        raise CheckpointError(
            f"{role}: torchvision weights {weights} of {name!r} are not in the local cache: {path} does not exist; "
            f"nothing is downloaded at run time. Put the file from {weights.url} there (or set TORCH_HOME), or "
            f"set {role}.checkpoint to a local copy"
        )
    return model, torch.load(path, map_location="cpu", weights_only=True), str(path)
