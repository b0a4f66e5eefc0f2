r"""Callback arguments from the command line: ``--trainer.callbacks.<ClassName>.<argument>=<value>``.

jsonargparse cannot change one argument of one callback in a config's ``trainer.callbacks`` list (it replaces
or appends whole entries), so every variation would mean copying a YAML file. `expand_callback_overrides` reads
the callbacks of the ``--config`` files, applies the overrides to the named entries and passes the edited list
on as one ``--trainer.callbacks=[…]`` argument, before LightningCLI parses::

    visiondistill fit --config configs/classification/shapes_kd.yaml \
        --trainer.callbacks.LogitDistillation.temperature=2 \
        --trainer.callbacks.AttentionTransfer.student_layers="[-2, -1]"

The value is read as YAML (``2`` is a number, ``[-2, -1]`` a list, ``true`` a boolean, ``null`` is None).
When a class appears more than once, ``ClassName#2`` names its second entry (``#1`` the first). An unknown
class or argument fails naming it and the ones available.
"""

from __future__ import annotations

import difflib
import inspect
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import yaml

from visiondistill.core.errors import ConfigError

__all__ = ["PREFIX", "CallbackOverrideError", "expand_callback_overrides"]

#: Start of every callback override.
PREFIX = "--trainer.callbacks."

# A class name starts with a capital letter; jsonargparse's own `--trainer.callbacks.help` does not.
_OVERRIDE = re.compile(
    r"--trainer\.callbacks\.(?P<cls>[A-Z]\w*)(?:#(?P<nth>\d+))?(?:\.(?P<arg>\w+))?(?:=(?P<val>.*))?$"
)


class CallbackOverrideError(ConfigError):
    """A ``--trainer.callbacks.<ClassName>.<argument>`` override that names no callback or argument of the config."""


@dataclass
class _Override:
    flag: str
    class_name: str
    nth: int | None
    argument: str
    value: Any


def _split(argv: Sequence[str]) -> tuple[list[str], list[_Override]]:
    """The arguments without the overrides, and the overrides (in command-line order)."""
    rest: list[str] = []
    overrides: list[_Override] = []
    args = list(argv)
    i = 0
    while i < len(args):
        match = _OVERRIDE.match(args[i])
        if match is None:
            rest.append(args[i])
            i += 1
            continue
        flag = args[i].split("=", 1)[0]
        if match["arg"] is None:
            raise CallbackOverrideError(
                f"{flag}: name the argument too, as in --trainer.callbacks.{match['cls']}.<argument>=<value>"
            )
        text = match["val"]
        if text is None:
            if i + 1 >= len(args):
                raise CallbackOverrideError(f"{flag}: no value given (write {flag}=<value>)")
            text = args[i + 1]
            i += 1
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise CallbackOverrideError(f"{flag}: value {text!r} is not valid YAML ({error})") from None
        nth = int(match["nth"]) if match["nth"] else None
        overrides.append(_Override(flag, match["cls"], nth, match["arg"], value))
        i += 1
    return rest, overrides


def _config_callbacks(argv: Sequence[str]) -> list[Any] | None:
    """``trainer.callbacks`` of the last ``--config`` file that sets it, or ``None`` when none does."""
    callbacks = None
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            continue
        try:
            config = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue  # jsonargparse reports a missing or broken config file in its own words
        trainer = config.get("trainer") if isinstance(config, dict) else None
        if isinstance(trainer, dict) and trainer.get("callbacks") is not None:
            callbacks = trainer["callbacks"]
    return callbacks


def _entry(item: Any) -> dict[str, Any]:
    """A callback entry as ``{"class_path": …, "init_args": {…}}`` (configs may give a bare class path)."""
    if isinstance(item, str):
        return {"class_path": item, "init_args": {}}
    entry = dict(item)
    entry["init_args"] = dict(entry.get("init_args") or {})
    return entry


def _class_name(entry: dict[str, Any]) -> str:
    return str(entry.get("class_path", "")).rsplit(".", 1)[-1]


def _arguments(class_path: str) -> list[str] | None:
    """The init arguments of a callback class, or ``None`` when it takes any keyword or cannot be imported."""
    module, _, name = class_path.rpartition(".")
    try:
        signature = inspect.signature(getattr(import_module(module), name))
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL]


def _did_you_mean(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _apply(entries: list[dict[str, Any]], override: _Override) -> None:
    names = [_class_name(entry) for entry in entries]
    positions = [i for i, name in enumerate(names) if name == override.class_name]
    if not positions:
        available = ", ".join(dict.fromkeys(names)) or "none"
        raise CallbackOverrideError(
            f"{override.flag}: the config has no callback {override.class_name!r}"
            f"{_did_you_mean(override.class_name, names)}; its callbacks: {available}"
        )
    if override.nth is None and len(positions) > 1:
        raise CallbackOverrideError(
            f"{override.flag}: the config has {len(positions)} {override.class_name} callbacks; name one as "
            f"--trainer.callbacks.{override.class_name}#1.{override.argument} … #{len(positions)}"
        )
    nth = override.nth or 1
    if not 1 <= nth <= len(positions):
        raise CallbackOverrideError(
            f"{override.flag}: the config has {len(positions)} {override.class_name} callback(s); #{nth} does not exist"
        )
    entry = entries[positions[nth - 1]]
    accepted = _arguments(str(entry["class_path"]))
    if accepted is not None and override.argument not in accepted:
        raise CallbackOverrideError(
            f"{override.flag}: {override.class_name} has no argument {override.argument!r}"
            f"{_did_you_mean(override.argument, accepted)}; its arguments: {', '.join(accepted)}"
        )
    entry["init_args"][override.argument] = override.value


def expand_callback_overrides(argv: Sequence[str]) -> list[str]:
    """Replaces ``--trainer.callbacks.<ClassName>[#n].<argument>=<value>`` by the config's edited callback list.

    Args:
        argv: The ``visiondistill`` arguments (subcommand first).

    Returns:
        ``argv`` without the overrides and, when there were any, with ``--trainer.callbacks=<JSON list>`` appended
        (after every ``--config``, so it takes precedence).

    Raises:
        CallbackOverrideError: For an override without an argument or value, an unknown class, an ambiguous class
            (listed twice, no ``#n``) or an unknown argument.

    Example:
        >>> expand_callback_overrides(["fit", "--trainer.max_epochs=1"])
        ['fit', '--trainer.max_epochs=1']
    """
    rest, overrides = _split(argv)
    if not overrides:
        return list(argv)
    listed = _config_callbacks(rest)
    if listed is None:
        raise CallbackOverrideError(
            f"{overrides[0].flag}: no --config file sets trainer.callbacks, so there is no callback to change"
        )
    entries = [_entry(item) for item in (listed if isinstance(listed, list) else [listed])]
    for override in overrides:
        _apply(entries, override)
    return [*rest, "--trainer.callbacks=" + json.dumps(entries)]
