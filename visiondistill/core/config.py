"""Config values made into typed objects: a dataclass built from a mapping (YAML, a checkpoint's hyper-parameters)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["spec_from"]


def spec_from(cls: type, value: object, role: str, expected: str) -> Any:
    """Returns ``value`` when it is a ``cls`` spec, or builds one from a mapping (as stored in checkpoints).

    Args:
        cls: A spec dataclass.
        value: The spec or a mapping of its fields.
        role: ``"teacher"``/``"student"`` for messages.
        expected: What the caller accepts, for the message on another type.

    Raises:
        TypeError: On unknown keys (naming them and the valid ones) or another type.
    """
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - valid)
        if unknown:
            raise TypeError(f"{role} spec: unknown keys {unknown}; valid keys are {sorted(valid)}")
        return cls(**dict(value))
    raise TypeError(f"{role} spec must be {expected}, got {type(value).__name__}")
