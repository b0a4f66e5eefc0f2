"""Argument checks shared by the pure tensor functions (losses, maps, metrics): each names the bad value."""

from __future__ import annotations

import math

from torch import Tensor

from visiondistill.core.errors import ConfigError

__all__ = ["check_ndim", "check_positive", "check_same_shape"]


def check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """Raises a `ConfigError` (a `ValueError`) naming both tensors and shapes when ``a`` and ``b`` differ in shape."""
    if a.shape != b.shape:
        raise ConfigError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def check_ndim(name: str, x: Tensor, ndim: int, layout: str) -> None:
    """Raises a `ConfigError` (a `ValueError`) naming ``x`` and its expected ``layout`` when it is not ``ndim``-D."""
    if x.ndim != ndim:
        raise ConfigError(f"{name} must be {ndim}-D {layout}, got shape {tuple(x.shape)}")


def check_positive(name: str, value: float) -> None:
    """Raises a `ConfigError` (a `ValueError`) naming ``value`` when it is not a finite number > 0."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
