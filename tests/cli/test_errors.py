"""Errors on one screen: `visiondistill.cli.errors` turns user errors into one ``error: …`` block and an exit status."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch._utils import ExceptionWrapper

from visiondistill import cli
from visiondistill.cli import main
from visiondistill.cli.errors import (
    EXIT_FAILURE,
    EXIT_USAGE,
    TRACEBACK_ENV,
    AcceleratorError,
    find_user_error,
    run_guarded,
    user_message,
)
from visiondistill.core.errors import ConfigError
from visiondistill.data.errors import MissingDataError

ROOT = Path(__file__).resolve().parents[2]
TEACHER_CONFIG = ROOT / "configs" / "classification" / "shapes_teacher.yaml"


def _raise(error: BaseException):
    def command(argv: list[str]) -> int:
        raise error

    return command


def _wrapped_like_jsonargparse(error: Exception) -> ValueError:
    """What jsonargparse raises when a class's constructor fails: a union dump raised from the original error."""
    try:
        try:
            raise error
        except Exception as inner:
            raise ValueError(
                "Does not validate against any of the Union subtypes\nGiven value: Namespace(…)"
            ) from inner
    except ValueError as outer:
        return outer


def test_a_user_error_wrapped_by_jsonargparse_is_found_and_printed_alone(capsys):
    wrapped = _wrapped_like_jsonargparse(ConfigError("LogitDistillation: temperature must be > 0, got -1.0"))
    assert isinstance(find_user_error(wrapped), ConfigError)
    assert run_guarded(_raise(wrapped), []) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: LogitDistillation: temperature must be > 0, got -1.0\n")
    assert "Traceback" not in err and "Union" not in err and len(err.splitlines()) == 2


def test_data_errors_exit_1_and_config_errors_exit_2(capsys):
    assert run_guarded(_raise(MissingDataError("Image 'a.png' does not exist.")), []) == EXIT_FAILURE
    assert run_guarded(_raise(ConfigError("lr must be > 0")), []) == EXIT_USAGE
    assert run_guarded(lambda argv: None, []) == 0


def test_a_dataloader_worker_error_is_printed_without_the_pasted_traceback(capsys):
    try:
        raise MissingDataError("Image '/data/x.png' (id 3 in 'train.json') does not exist.")
    except MissingDataError:
        wrapper = ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 0")
    try:
        wrapper.reraise()
    except MissingDataError as error:
        reraised = error
    assert "Original Traceback" in str(reraised)
    assert user_message(reraised) == "Image '/data/x.png' (id 3 in 'train.json') does not exist."
    assert run_guarded(_raise(reraised), []) == EXIT_FAILURE
    assert "Traceback" not in capsys.readouterr().err


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        run_guarded(_raise(ZeroDivisionError("a bug of ours")), [])


def test_the_traceback_flag_and_variable_reraise_user_errors(monkeypatch):
    seen = []

    def command(argv: list[str]) -> int:
        seen.append(argv)
        raise ConfigError("bad")

    with pytest.raises(ConfigError):
        run_guarded(command, ["fit", "--traceback"])
    assert seen == [["fit"]], "--traceback is taken off the arguments"
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(ConfigError):
        run_guarded(command, ["fit"])
    monkeypatch.setenv(TRACEBACK_ENV, "0")
    assert run_guarded(command, ["fit"]) == EXIT_USAGE


def test_a_tool_goes_through_the_same_handler(monkeypatch, capsys):
    def broken_tool(argv):
        raise MissingDataError(f"'{argv[0]}' does not exist")

    monkeypatch.setattr(cli, "_tools", lambda: {"synth": (broken_tool, "")})
    assert main(["synth", "nowhere"]) == EXIT_FAILURE
    assert capsys.readouterr().err.startswith("error: 'nowhere' does not exist")


def test_gpu_without_a_gpu_is_refused_before_lightning(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for flag in (["--trainer.accelerator", "gpu"], ["--trainer.accelerator=cuda"]):
        assert main(["fit", "--config", str(TEACHER_CONFIG), *flag]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert "--trainer.accelerator" in err and "no " in err and "cpu" in err and "Traceback" not in err


def test_lightnings_own_accelerator_refusal_is_translated(capsys):
    # An accelerator set in a config file reaches Lightning, which raises its bare message.
    error = RuntimeError("No supported gpu backend found!")
    assert run_guarded(_raise(error), []) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: trainer.accelerator: gpu: no GPU is available") and "cpu" in err
    assert issubclass(AcceleratorError, ConfigError)


def test_a_config_typo_gets_the_key_and_a_close_match(capsys):
    argv = ["fit", "--config", str(TEACHER_CONFIG), "--model.init_args.studnet.name=resnet18"]
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "studnet" in err and "did you mean 'student'?" in err
    assert "usage:" not in err and "Union" not in err and len(err.splitlines()) == 2


def test_a_typo_in_a_top_level_key_gets_a_close_match(capsys):
    assert main(["fit", "--config", str(TEACHER_CONFIG), "--trainr.max_epochs=1"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "trainr.max_epochs" in err and "did you mean 'trainer" in err
