"""`make demo` twice: finished runs are reused, a stopped run is resumed with ``--ckpt_path last``, nothing is retrained
into an existing run folder."""

from __future__ import annotations

from pathlib import Path

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
