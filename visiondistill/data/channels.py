"""The input-channel count of the datasets, data modules and transforms, and its deprecated spelling ``in_chans``."""

from __future__ import annotations

import warnings

from visiondistill.core.errors import ConfigError

__all__ = ["DEFAULT_IN_CHANNELS", "resolve_in_channels"]

DEFAULT_IN_CHANNELS = 3


def resolve_in_channels(in_channels: int, in_chans: int | None = None, owner: str = "data module") -> int:
    """Validates an input-channel count, accepting the older spelling ``in_chans`` (deprecated).

    Configs and checkpoints written before the rename pass ``in_chans``; it still works, with a `FutureWarning`
    that says what to write instead.

    Args:
        in_channels: 1 (grayscale) or 3 (RGB).
        in_chans: The deprecated spelling; ``None`` when not given.
        owner: Who asks, quoted in messages (e.g. ``"ShapesClassification"``).

    Returns:
        The channel count.

    Raises:
        ValueError: For a count other than 1 or 3, or both spellings given with different values.

    Example::

        >>> resolve_in_channels(1)
        1
    """
    if in_chans is not None:
        # in_channels at its default counts as "not given": an old config sets only in_chans
        if in_channels not in (DEFAULT_IN_CHANNELS, in_chans):
            raise ConfigError(
                f"{owner}: in_channels={in_channels!r} and the deprecated in_chans={in_chans!r} disagree; "
                "set in_channels only"
            )
        warnings.warn(
            f"{owner}: 'in_chans' is deprecated, write 'in_channels: {in_chans}' instead (in a config: "
            "data.init_args.in_channels)",
            FutureWarning,
            stacklevel=3,
        )
        in_channels = in_chans
    if isinstance(in_channels, bool) or in_channels not in (1, 3):
        raise ConfigError(f"{owner}: in_channels must be 1 (grayscale) or 3 (RGB), got {in_channels!r}")
    return in_channels
