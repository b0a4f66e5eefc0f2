"""`make demo` twice: finished runs are reused, a stopped run is resumed with ``--ckpt_path last``, nothing is retrained
into an existing run folder."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from visiondistill import demo


def _run_with_last(folder: Path, processed_epochs: int) -> None:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text("model: {}\n")
    progress = {"current": {"processed": processed_epochs}}
    torch.save(
        {"epoch": processed_epochs - 1, "loops": {"fit_loop": {"epoch_progress": progress}}},
        folder / "checkpoints" / "last.ckpt",
    )


def test_a_second_demo_reuses_finished_runs_and_resumes_stopped_ones(tmp_path: Path, monkeypatch):
    commands: list[list[str]] = []
    monkeypatch.setattr(demo.subprocess, "run", lambda command, check: commands.append(command))
    settings = demo.DemoSettings(
        runs=tmp_path / "runs", data_dir=tmp_path / "data", out=tmp_path / "out", overrides=("--trainer.max_epochs=3",)
    )
    runs = demo.TASKS["classification"].runs
    teacher, scratch, distilled = runs
    _run_with_last(settings.run_dir("classification", teacher), processed_epochs=3)  # finished
    _run_with_last(settings.run_dir("classification", scratch), processed_epochs=1)  # stopped after epoch 0
    for run in runs:
        demo.fit("classification", run, teacher, settings)
    assert len(commands) == 2  # the teacher is reused
    assert commands[0][-1] == "--ckpt_path=last" and scratch.config in commands[0]
    assert distilled.config in commands[1] and "--ckpt_path=last" not in commands[1]  # a new run
    assert demo.max_epochs(teacher, ()) == 20  # the config's, without an override


def test_a_failed_run_ends_the_demo_with_its_exit_status_and_no_traceback(monkeypatch, capsys):
    """A fit stopped by SIGTERM (status 143) or by bad input has printed its own error: the demo adds one line."""

    def stopped(task: str, settings: demo.DemoSettings) -> list[Path]:
        raise subprocess.CalledProcessError(143, ["python", "-m", "visiondistill.cli", "fit", "--config", "a b.yaml"])

    monkeypatch.setattr(demo, "run_task", stopped)
    assert demo.main(["--task", "classification"]) == 143
    err = capsys.readouterr().err
    assert err.startswith("error: `python -m visiondistill.cli fit --config 'a b.yaml'` ended with exit status 143")
    assert "goes on from where this one stopped" in err and "Traceback" not in err
    monkeypatch.setattr(demo, "run_task", lambda task, settings: (_ for _ in ()).throw(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):  # anything else is a bug and keeps its traceback
        demo.main(["--task", "classification"])
