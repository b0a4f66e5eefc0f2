"""The project's error types: every mistake a user can make ends in a `VisionDistillError`.

The command line (`visiondistill.cli`) prints these as one short message and exits with a non-zero status instead
of a traceback; any other exception is a bug of ours and keeps its traceback. Each subclass also derives from the
built-in type a caller would expect (`ValueError`, `TypeError`, `FileNotFoundError`), so ``except ValueError``
keeps working.
"""

from __future__ import annotations

__all__ = ["ConfigError", "ConfigTypeError", "VisionDistillError"]


class VisionDistillError(Exception):
    """Base class of every error visiondistill raises for a user's mistake (data, config, checkpoint, layer, …).

    The message names the file, key or value at fault and says how to fix it.
    """


class ConfigError(VisionDistillError, ValueError):
    """A configuration value or argument that is invalid (wrong type, out of range, unknown name).

    Example:
        >>> raise ConfigError("temperature must be a positive number, got -1")
        Traceback (most recent call last):
        ...
        visiondistill.core.errors.ConfigError: temperature must be a positive number, got -1
    """


class ConfigTypeError(VisionDistillError, TypeError):
    """A configuration entry of the wrong kind: an unknown key, a value of the wrong type, keys that contradict."""
