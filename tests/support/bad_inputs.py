"""What every bad-input test asserts: the project's own error, a message naming the culprit, bounded time, and no
byte changed in an existing run folder.

Use `expect_user_error` for a Python call and `expect_cli_error` for a `visiondistill …` command run in-process;
wrap either in `unchanged(folder)` to check that a run folder is left exactly as it was.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from visiondistill.core.errors import VisionDistillError

#: Seconds a bad input may take to be refused; a hang fails the test instead of the suite.
TIME_LIMIT_S = 60.0


def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` by relative path (an empty dict for a missing folder)."""
    if not folder.exists():
        return {}
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@contextmanager
def unchanged(folder: Path) -> Iterator[None]:
    """Asserts that no file under ``folder`` is created, deleted or modified inside the ``with`` block."""
    before = snapshot(folder)
    yield
    after = snapshot(folder)
    added, removed = sorted(after.keys() - before.keys()), sorted(before.keys() - after.keys())
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    assert not (added or removed or changed), f"{folder} changed: added {added}, removed {removed}, changed {changed}"


def _bounded(call: Callable[[], Any], limit_s: float) -> BaseException | None:
    """Runs ``call`` in a thread; returns what it raised (``None`` if nothing), failing the test past ``limit_s``."""
    outcome: dict[str, BaseException | None] = {"error": None}

    def target() -> None:
        try:
            outcome["value"] = call()  # type: ignore[assignment]
        except BaseException as error:  # noqa: BLE001 - the caller inspects it
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit_s)
    if thread.is_alive():
        pytest.fail(f"a bad input was not refused within {limit_s:.0f} s (hang)")
    return outcome.get("value") if outcome["error"] is None else outcome["error"]  # type: ignore[return-value]


def expect_user_error(
    call: Callable[[], Any],
    *names: str,
    error_type: type[VisionDistillError] = VisionDistillError,
    limit_s: float = TIME_LIMIT_S,
) -> VisionDistillError:
    """Asserts that ``call()`` raises ``error_type`` (a `VisionDistillError`) whose message contains every name.

    Args:
        call: The call that must fail.
        *names: Substrings the message must contain (the culprit file, key or value, and the fix's keyword).
        error_type: The expected error class.
        limit_s: Time limit in seconds.

    Returns:
        The raised error.
    """
    assert issubclass(error_type, VisionDistillError), f"{error_type} is not one of the project's error types"
    error = _bounded(call, limit_s)
    if not isinstance(error, BaseException):
        pytest.fail(f"expected {error_type.__name__}, but the call returned {error!r}")
    if not isinstance(error, error_type):
        raise AssertionError(f"expected {error_type.__name__}, got {type(error).__name__}: {error}") from error
    message = str(error)
    missing = [name for name in names if name not in message]
    assert not missing, f"message does not name {missing}: {message}"
    return error


def expect_cli_error(
    argv: Sequence[str],
    capsys: pytest.CaptureFixture[str],
    *names: str,
    limit_s: float = TIME_LIMIT_S,
) -> str:
    """Runs ``visiondistill <argv>`` in-process and asserts a short error on stderr and a non-zero exit status.

    The message must contain every name, and no traceback or jsonargparse union dump may be printed.

    Args:
        argv: The command's arguments (without ``visiondistill``).
        capsys: pytest's output capture.
        *names: Substrings the message must contain.
        limit_s: Time limit in seconds.

    Returns:
        What the command printed on stderr.
    """
    from visiondistill.cli import main

    capsys.readouterr()
    outcome = _bounded(lambda: main(list(argv)), limit_s)
    if isinstance(outcome, SystemExit):
        status = outcome.code
    elif isinstance(outcome, BaseException):
        raise AssertionError(f"`visiondistill {' '.join(argv)}` raised instead of exiting: {outcome!r}") from outcome
    else:
        status = outcome
    err = capsys.readouterr().err
    assert status not in (0, None), f"`visiondistill {' '.join(argv)}` exited with {status!r}; stderr: {err}"
    assert "Traceback" not in err, f"traceback printed:\n{err}"
    assert "Union subtypes" not in err, f"jsonargparse union dump printed:\n{err}"
    missing = [name for name in names if name not in err]
    assert not missing, f"stderr does not name {missing}:\n{err}"
    return err
