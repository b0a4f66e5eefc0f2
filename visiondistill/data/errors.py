"""Errors raised by the data layer.

Every message names the file or folder at fault and says how to fix it, so a failed run can be repaired without
reading the traceback. The constructors take a single message (plus keyword extras) because PyTorch re-raises errors
from DataLoader worker processes as ``type(error)(message)``.
"""

from __future__ import annotations

from pathlib import Path

from visiondistill.core.errors import VisionDistillError

__all__ = ["CorruptImageError", "DataError", "MissingDataError"]


class DataError(VisionDistillError):
    """Base class of every error raised by :mod:`visiondistill.data`."""


class MissingDataError(DataError, FileNotFoundError):
    """A data folder, split or file that a data module needs does not exist.

    Args:
        message: What is missing, where, and how to create it.
        path: The missing path, kept on the error as ``path``.
    """

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None

    def __str__(self) -> str:
        """Return the message only (``FileNotFoundError`` would prefix an errno otherwise)."""
        return str(self.args[0]) if self.args else ""


class CorruptImageError(DataError):
    """An image file exists but cannot be decoded.

    Args:
        message: The message; build it with :meth:`for_file` to get the standard wording.
        path: The offending file, kept on the error as ``path``.
    """

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None

    @classmethod
    def for_file(cls, path: str | Path, reason: BaseException | str) -> CorruptImageError:
        """Build the error for one unreadable file.

        Args:
            path: The unreadable image file.
            reason: The decoder's exception or a short description of the failure.

        Returns:
            An error whose message names the file, the reason and the fix.
        """
        if isinstance(reason, BaseException):
            reason = f"{type(reason).__name__}: {reason}"
        message = (
            f"Cannot read image file '{path}' ({reason}). The file is corrupt, truncated or not an image: delete it, "
            "or regenerate/re-download the data set (for the synthetic shapes: delete the data folder, or run "
            "`visiondistill synth --overwrite`)."
        )
        return cls(message, path=path)
