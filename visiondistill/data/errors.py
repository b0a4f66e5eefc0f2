"""Errors raised by the data layer.

Every message names the file or folder at fault and says how to fix it, so a failed run can be repaired without
reading the traceback. The constructors take a single message (plus keyword extras) because PyTorch re-raises errors
from DataLoader worker processes as ``type(error)(message)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from visiondistill.core.errors import VisionDistillError

__all__ = ["CorruptImageError", "DataError", "MissingDataError", "check_image_files"]


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


def check_image_files(image_dir: str | Path, file_names: Iterable[str], listed_in: str | Path, shown: int = 5) -> None:
    """Checks, at setup, that every image an annotation file names exists (a missing one would fail mid-epoch).

    Args:
        image_dir: The folder the file names are relative to.
        file_names: The file names (duplicates are checked once).
        listed_in: The annotation file that lists them (named in the message).
        shown: How many missing files the message names.

    Raises:
        MissingDataError: Naming the first ``shown`` missing files, how many are missing, and the fix.
    """
    image_dir = Path(image_dir)
    names = list(dict.fromkeys(str(name) for name in file_names))
    missing = [name for name in names if not (image_dir / name).is_file()]
    if missing:
        more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
        raise MissingDataError(
            f"{len(missing)} of the {len(names)} images listed in '{listed_in}' are missing from '{image_dir}': "
            f"{', '.join(missing[:shown])}{more}; copy them there or remove their entries from the JSON",
            path=image_dir / missing[0],
        )
