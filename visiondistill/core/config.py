"""Config values made into typed objects: a dataclass built from a mapping (YAML, a checkpoint's hyper-parameters)."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

from visiondistill.core.errors import ConfigTypeError

__all__ = ["RENAMED_KEYS", "spec_from"]

#: Spec keys renamed since earlier releases: old spelling -> current field. Configs and checkpoints written before a
#: rename hold the old key; `spec_from` translates it, with a `FutureWarning` (shown by default, unlike a
#: `DeprecationWarning`: the reader to reach is the one who wrote the config).
RENAMED_KEYS = {"in_chans": "in_channels"}


def spec_from(cls: type, value: object, role: str, expected: str) -> Any:
    """Returns ``value`` when it is a ``cls`` spec, or builds one from a mapping (as stored in checkpoints).

    Args:
        cls: A spec dataclass.
        value: The spec or a mapping of its fields.
        role: ``"teacher"``/``"student"`` for messages.
        expected: What the caller accepts, for the message on another type.

    A key renamed since (`RENAMED_KEYS`, e.g. ``in_chans`` → ``in_channels``) is translated with a `FutureWarning`.

    Raises:
        TypeError: On unknown keys (naming them and the valid ones), on a renamed key given in both spellings with
            different values, or on another type.
    """
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        valid = {f.name for f in dataclasses.fields(cls)}
        fields = _renamed(dict(value), valid, role)
        unknown = sorted(set(fields) - valid)
        if unknown:
            raise ConfigTypeError(f"{role} spec: unknown keys {unknown}; valid keys are {sorted(valid)}")
        return cls(**fields)
    raise ConfigTypeError(f"{role} spec must be {expected}, got {type(value).__name__}")


def _renamed(fields: dict[str, Any], valid: set[str], role: str) -> dict[str, Any]:
    for old, new in RENAMED_KEYS.items():
        if old not in fields or old in valid or new not in valid:
            continue
        value = fields.pop(old)
        if new in fields and fields[new] != value:
            raise ConfigTypeError(f"{role} spec: {old}={value!r} and {new}={fields[new]!r} disagree; set {new} only")
        warnings.warn(
            f"{role} spec: {old!r} is deprecated, write '{new}: {value}' instead (configs and checkpoints written "
            f"with {old!r} still load)",
            FutureWarning,
            stacklevel=4,
        )
        fields[new] = value
    return fields
