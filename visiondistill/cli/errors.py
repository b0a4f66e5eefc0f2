"""Errors on one screen: what the ``visiondistill`` command prints for a user's mistake, and its exit status.

`run_guarded` runs a command and turns every `VisionDistillError` (also when jsonargparse, Lightning or a DataLoader
worker wrapped it), every config or command-line parse error and a missing accelerator into one short block on
stderr::

    error: LogitDistillation: temperature must be > 0, got -1.0
    (set VISIONDISTILL_TRACEBACK=1 or pass --traceback to see the traceback)

Exit status: ``2`` for a command line or config that is refused (unknown key, wrong type, missing config file,
invalid argument value: `ConfigError`, accelerator not available), ``1`` for any other user error (data,
checkpoint, layer name, run folder). Any other exception is a bug of ours and keeps its traceback. With
``VISIONDISTILL_TRACEBACK=1`` in the environment or ``--traceback`` anywhere on the command line, nothing is
caught and the full traceback is shown.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from visiondistill.core.errors import ConfigError, VisionDistillError

__all__ = [
    "EXIT_FAILURE",
    "EXIT_TERMINATED",
    "TERMINATED_MESSAGE",
    "EXIT_USAGE",
    "TRACEBACK_ENV",
    "TRACEBACK_FLAG",
    "AcceleratorError",
    "CommandLineError",
    "check_accelerator",
    "find_user_error",
    "run_guarded",
    "user_message",
]

#: Exit status of a refused command line or config (`ConfigError` and its subclasses).
EXIT_USAGE = 2
#: Exit status of any other user error (data, checkpoint, layer, run folder, …).
EXIT_FAILURE = 1
#: Exit status of a training stopped by SIGTERM (128 + 15, a shell's status for a process the signal ended), so that
#: a scheduler does not count a pre-empted run as finished. Lightning's `SIGTERMException` is a `SystemExit` without
#: a code, which would exit with 0.
EXIT_TERMINATED = 143
#: What a training stopped by SIGTERM prints (`LastCheckpoint` has saved where it stopped).
TERMINATED_MESSAGE = (
    "error: stopped by SIGTERM. The run folder's checkpoints/last.ckpt holds where it stopped: run the same command "
    "with --ckpt_path last to resume."
)
#: Environment variable that, set to a non-empty value other than ``0``, shows full tracebacks.
TRACEBACK_ENV = "VISIONDISTILL_TRACEBACK"
#: Command-line flag (anywhere in the arguments, removed before parsing) that shows full tracebacks.
TRACEBACK_FLAG = "--traceback"

_UNION_DUMP = "Does not validate against any of the Union subtypes"
_HINT = f"(set {TRACEBACK_ENV}=1 or pass {TRACEBACK_FLAG} to see the traceback)"


class CommandLineError(ConfigError):
    """A command line or config file that jsonargparse refused (unknown key, wrong type, missing file)."""


class AcceleratorError(ConfigError):
    """``--trainer.accelerator`` names hardware this machine does not have."""


def traceback_requested(argv: Sequence[str]) -> bool:
    """Whether the user asked for full tracebacks (`TRACEBACK_FLAG` in ``argv`` or `TRACEBACK_ENV` set)."""
    return TRACEBACK_FLAG in argv or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from or while handling, depth first, each once."""
    seen: set[int] = set()
    stack = [error] if error is not None else []
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend([current.__context__, current.__cause__])  # the cause is visited first


def find_user_error(error: BaseException) -> VisionDistillError | None:
    """The first `VisionDistillError` in ``error``'s chain (jsonargparse and Lightning wrap it), or ``None``."""
    return next((e for e in _chain(error) if isinstance(e, VisionDistillError)), None)


def user_message(error: BaseException) -> str:
    """The message of a user error, without the traceback a DataLoader worker pastes into re-raised errors."""
    message = str(error)
    if message.startswith("Caught ") and "Original Traceback" in message:
        # torch's ExceptionWrapper.reraise: "Caught X in DataLoader worker process 0.\nOriginal Traceback …\n
        # <module>.<X>: <message>"; keep what follows the last "<X>: ".
        marker = f"{type(error).__name__}: "
        position = message.rfind(marker)
        if position >= 0:
            message = message[position + len(marker) :]
    return message.strip()


def _exit_status(error: BaseException) -> int:
    return EXIT_USAGE if isinstance(error, ConfigError) else EXIT_FAILURE


def _print_error(message: str) -> None:
    print(f"error: {message}\n{_HINT}", file=sys.stderr)


# -- jsonargparse's parse errors ---------------------------------------------------------------------------------


def _readable(text: str) -> str:
    """One line from jsonargparse's nested wording (``Parser key "lr": Expected a <class 'float'>`` → ``lr: …``)."""
    text = re.sub(r'Parser key "([^"]+)":\s*', r"\1: ", text)
    text = re.sub(r"Problem with given class_path '([^']+)':\s*", r"\1: ", text)
    text = re.sub(r"<class '([\w.]+)'>", r"\1", text)
    return re.sub(r"\s*\n\s*", " ", text).strip()


def _parse_detail(message: str, cause: BaseException | None) -> str:
    """The useful part of a parse error: the key, and the first error jsonargparse gave inside a union dump."""
    texts = [str(e) for e in _chain(cause)] if cause is not None else []
    if _UNION_DUMP not in message and not any(_UNION_DUMP in t for t in texts):
        return _readable(message)
    first = next(i for i, t in enumerate([message, *texts]) if _UNION_DUMP in t)
    inner = [t for t in [message, *texts][first + 1 :] if _UNION_DUMP not in t]
    detail = inner[0] if inner else message.split("\nGiven value")[0]
    key = re.match(r'Parser key "([^"]+)":', message)
    prefix = f"{key.group(1)}: " if key and not detail.startswith(key.group(0)) else ""
    return prefix + _readable(detail)


def _accepted_names(detail: str, parser: Any) -> list[str]:
    """Names that were accepted where the unknown key was given: a class's init arguments, or the parser's keys."""
    classes = re.findall(r"([A-Za-z_][\w.]*\.[A-Z]\w*): ", detail)
    if classes:
        module, _, name = classes[-1].rpartition(".")
        try:
            mro = getattr(importlib.import_module(module), name).__mro__
        except (ImportError, AttributeError):
            return []
        names: list[str] = []
        for cls in mro:  # a subclass's **kwargs go on to its bases (ClassificationTask → DistillationTask: lr, …)
            try:
                parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
            except (TypeError, ValueError):
                break
            kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
            names += [p.name for p in parameters if p.kind not in kinds and p.name not in names]
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
                break
        return names
    subcommand = re.search(r"Subcommand '(\w+)'", detail)
    subcommands = getattr(getattr(parser, "_subcommands_action", None), "choices", None) or {}
    if subcommand and subcommand.group(1) in subcommands:
        parser = subcommands[subcommand.group(1)]
    return sorted({str(action.dest) for action in getattr(parser, "_actions", []) if action.dest != "help"})


def _suggestion(detail: str, parser: Any) -> str:
    """`` (did you mean 'temperature'?)`` for an unknown key close to an accepted one, else ``""``."""
    unknown = re.search(r"unrecognized arguments: --?([\w.]+)|[Oo]ption '([\w.]+)'", detail)
    if unknown is None:
        return ""
    key = unknown.group(1) or unknown.group(2)
    names = _accepted_names(detail, parser)
    if not any("." in name for name in names):  # init arguments: compare the first component (`studnet.name`)
        key = key.split(".")[0]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _broken_config(argv: Sequence[str]) -> str | None:
    """The first ``--config`` file that is not valid YAML (jsonargparse's message does not name it), else ``None``."""
    import yaml

    for path in _flag_values(argv, "--config"):
        try:
            with open(path, encoding="utf-8") as handle:
                yaml.safe_load(handle)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return path
    return None


@contextmanager
def _parse_errors_raise(argv: Sequence[str] = ()) -> Iterator[None]:
    """Turns jsonargparse's "print the whole usage and exit 2" into a `CommandLineError` with a short message.

    Only the outermost parser prints and exits (``exit_on_error``); inner parsers (a class's init arguments) raise
    on their own, and jsonargparse catches those, so they are left alone.
    """
    from jsonargparse import ArgumentParser

    original = ArgumentParser.error

    def error(self: Any, message: str, ex: Exception | None = None) -> Any:
        if not self.exit_on_error:
            return original(self, message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        detail = _parse_detail(message, ex)
        broken = _broken_config(argv) if detail.startswith("Problems parsing config") else None
        if broken is not None:
            detail = f"{broken}: {detail}; fix the YAML syntax there"
        raise CommandLineError(detail + _suggestion(detail, parser)) from ex

    ArgumentParser.error = error  # type: ignore[method-assign]
    try:
        yield
    finally:
        ArgumentParser.error = original  # type: ignore[method-assign]


# -- accelerators ------------------------------------------------------------------------------------------------


def _flag_values(argv: Sequence[str], flag: str) -> list[str]:
    values = []
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
    return values


def _accelerator_available(name: str) -> bool:
    import torch

    if name == "cuda":
        return torch.cuda.is_available()
    if name == "mps":
        return torch.backends.mps.is_available()
    return torch.cuda.is_available() or torch.backends.mps.is_available()  # "gpu": either backend


def check_accelerator(argv: Sequence[str]) -> None:
    """Refuses ``--trainer.accelerator gpu|cuda|mps`` on a machine without that hardware, before Lightning does.

    Raises:
        AcceleratorError: Naming the flag, the value and the fix.
    """
    for value in _flag_values(argv, "--trainer.accelerator"):
        name = value.strip().lower()
        if name in ("gpu", "cuda", "mps") and not _accelerator_available(name):
            raise AcceleratorError(_accelerator_message(f"--trainer.accelerator {value}", name))


def _accelerator_message(where: str, name: str) -> str:
    hardware = {"gpu": "GPU", "cuda": "CUDA GPU", "mps": "Apple MPS device"}.get(name, name)
    return (
        f"{where}: no {hardware} is available on this machine; "
        "use --trainer.accelerator cpu (or auto), or run on a machine with one"
    )


def _lightning_accelerator_error(error: BaseException) -> AcceleratorError | None:
    """Lightning's own refusal (an accelerator set in a config file) as an `AcceleratorError`, else ``None``."""
    for current in _chain(error):
        text = str(current)
        if "No supported gpu backend found" in text:
            return AcceleratorError(_accelerator_message("trainer.accelerator: gpu", "gpu"))
        match = re.search(r"`(\w+)Accelerator` can not run on your system", text)
        if match:
            name = match.group(1).lower()
            return AcceleratorError(_accelerator_message(f"trainer.accelerator: {name}", name))
    return None


# -- the guard ---------------------------------------------------------------------------------------------------


def run_guarded(command: Callable[[list[str]], int | None], argv: Sequence[str]) -> int:
    """Runs ``command(argv)`` and prints user errors as one short block instead of a traceback.

    Args:
        command: The command; its return value is the exit status (``None`` counts as 0).
        argv: Its arguments; `TRACEBACK_FLAG` is removed from them before the call.

    Returns:
        The command's exit status, `EXIT_USAGE` for a refused command line or config, `EXIT_FAILURE` for
        another user error.

    Raises:
        Exception: Any error that is not a user's mistake (a bug), with its traceback; every error when
            tracebacks are requested.
    """
    show_traceback = traceback_requested(argv)
    argv = [arg for arg in argv if arg != TRACEBACK_FLAG]
    if show_traceback:
        return command(argv) or 0
    try:
        check_accelerator(argv)
        with _parse_errors_raise(argv):
            return command(argv) or 0
    except Exception as error:  # noqa: BLE001 - sorted into user errors (printed) and bugs (re-raised)
        user_error = find_user_error(error) or _lightning_accelerator_error(error)
        if user_error is None:
            raise
        _print_error(user_message(user_error))
        return _exit_status(user_error)
