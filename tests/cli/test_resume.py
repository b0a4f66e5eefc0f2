"""Resume from where the run stopped: ``last.ckpt`` at every epoch end and on SIGTERM / Ctrl-C (`LastCheckpoint`), and
``visiondistill fit … --ckpt_path last`` after a SIGKILL restores everything and logs no step twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader

from visiondistill.cli import main
from visiondistill.cli.errors import EXIT_TERMINATED, TERMINATED_MESSAGE
from visiondistill.cli.last_checkpoint import LastCheckpoint
from visiondistill.core.protocol import batch_inputs
from visiondistill.models import ClassifierSpec
from visiondistill.tasks import ClassificationTask

from ..conftest import quadrant_images
from ..support.runs import TESTS_DIR, StopAt, checkpoint_state, distilled_config, event_steps, raw_event_steps

ROOT = Path(__file__).resolve().parents[2]


class _NeverImproves(Callback):
    """Logs a validation score that gets worse every epoch, so only epoch 0 is ever the best."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log("val/score", -float(trainer.current_epoch))


def _trainer(tmp_path: Path, max_epochs: int, *callbacks: Callback) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=max_epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(tmp_path / "runs", name="run", version=""),
        callbacks=[*callbacks, ModelCheckpoint(monitor="val/score", mode="max", filename="best"), LastCheckpoint()],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def _task() -> ClassificationTask:
    return ClassificationTask(student=ClassifierSpec(name="test_resnet"), num_classes=4, warmup_epochs=0)


def test_last_checkpoint_is_the_final_epoch_when_the_score_never_improves(tmp_path: Path):
    trainer = _trainer(tmp_path, 3, _NeverImproves())
    loader = DataLoader(quadrant_images(n=16), batch_size=8)
    trainer.fit(_task(), loader, loader)
    folder = tmp_path / "runs" / "run" / "checkpoints"
    last, best = checkpoint_state(folder / "last.ckpt"), checkpoint_state(folder / "best.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 6)  # the end of the third epoch
    assert (best["epoch"], best["global_step"]) == (0, 2)  # the only improvement
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt"]  # no best-v1, no leftovers


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stopped_run_writes_last_checkpoint_where_it_stopped(tmp_path: Path, how: str):
    trainer = _trainer(tmp_path, 3, _NeverImproves(), StopAt(how))
    loader = DataLoader(quadrant_images(n=16), batch_size=8)
    # Ctrl-C: Lightning shuts down and exits with status 1; SIGTERM: it raises SIGTERMException at the next batch.
    with pytest.raises(SystemExit if how == "ctrl-c" else SIGTERMException):
        trainer.fit(_task(), loader, loader)
    last = checkpoint_state(tmp_path / "runs" / "run" / "checkpoints" / "last.ckpt")
    # Ctrl-C stops before batch 1 of epoch 1; on SIGTERM Lightning finishes that batch first.
    assert (last["epoch"], last["global_step"]) == (1, 3 if how == "ctrl-c" else 4)


def test_fit_stopped_by_sigterm_exits_with_143_and_says_how_to_resume(tmp_path: Path, monkeypatch, capsys):
    """Lightning's SIGTERMException is a SystemExit without a code: uncaught, a pre-empted `fit` would exit with 0."""
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    stop = {"class_path": "support.runs.StopAt", "init_args": {"how": "sigterm", "epoch": 1, "batch": 1}}
    config = distilled_config(tmp_path, max_epochs=3, extra=[stop])
    assert main(["fit", "--config", str(config)]) == EXIT_TERMINATED == 143
    assert "stopped by SIGTERM" in capsys.readouterr().err and "--ckpt_path last" in TERMINATED_MESSAGE
    last = checkpoint_state(tmp_path / "runs" / "kd" / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (1, 4)  # saved where it stopped, as the message says


# A CLI run in a subprocess (imports, data, 3 epochs) and its resume: 90-110 s on 2 loaded cores; make test-all runs it.
@pytest.mark.slow
def test_a_killed_run_resumes_at_the_next_epoch_and_restores_its_state(tmp_path: Path, monkeypatch):
    """SIGKILL (no chance to save) during epoch 2, after epochs 0 and 1; ``--ckpt_path last`` resumes at epoch 2."""
    marker, record = tmp_path / "frozen", tmp_path / "restored.json"
    freeze = {"class_path": "support.runs.FreezeAt", "init_args": {"epoch": 2, "batch": 1, "marker": str(marker)}}
    killed_config = distilled_config(tmp_path, max_epochs=3, extra=[freeze])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "visiondistill.cli", "fit", "--config", str(killed_config)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), f"the run did not reach epoch 2: {process.stderr.read().decode()[-3000:]}"
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        process.kill()
    run = tmp_path / "runs" / "kd"
    before = checkpoint_state(run / "checkpoints" / "last.ckpt")
    assert (before["epoch"], before["global_step"]) == (1, 4)  # epochs 0 and 1 done, 2 batches each
    assert marker.read_text() == "5"  # killed after batch 0 of epoch 2 (step 4) was logged and flushed
    assert raw_event_steps(run, "train/loss_step") == [0, 1, 2, 3, 4]

    first_config = (run / "config.yaml").read_text()
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    recorder = {"class_path": "support.runs.RecordRestored", "init_args": {"path": str(record)}}
    resumed_config = distilled_config(tmp_path, max_epochs=3, extra=[recorder])
    assert main(["fit", "--config", str(resumed_config), "--ckpt_path", "last"]) == 0

    restored = json.loads(record.read_text())
    assert (restored["epoch"], restored["global_step"]) == (2, 4)  # epoch k + 1 = 2, at the step last.ckpt holds
    saved_adapters = {
        k.removeprefix("distill_adapters."): v for k, v in before["state_dict"].items() if "adapters" in k
    }
    assert saved_adapters and set(restored["adapters"]) == set(saved_adapters)
    for key, value in saved_adapters.items():
        assert torch.equal(torch.tensor(restored["adapters"][key]), value), key
    states = before["callbacks"]
    kd_state = next(state for key, state in states.items() if key.startswith("LogitDistillation"))
    kd = restored["distillers"]["kd"]
    assert kd["factors"] == kd_state["weight_factors"] and kd["weight"] == pytest.approx(kd_state["weight"])
    assert len(kd["factors"]) == 2 and all(f < 1 for f in kd["factors"].values())  # schedule and adaptive rule
    adaptive_state = next(state for key, state in states.items() if key.startswith("AdaptiveDistillationWeights"))
    assert restored["adaptive"] == [adaptive_state] and adaptive_state["updates"] == 2
    probe_state = next(state for key, state in states.items() if key.startswith("GradCAMCallback"))
    assert restored["restored_probe"] == [probe_state["probe"]["indices"].tolist()]
    assert restored["probe_used"] == restored["restored_probe"]  # the resumed epoch probed the same images
    saved_images = batch_inputs(probe_state["probe"]["batch"])
    assert restored["probe_images"] == [pytest.approx(float(saved_images.sum()))]

    steps = event_steps(run)
    assert steps["train/loss_step"] == [0, 1, 2, 3, 4, 5]  # step 4 was logged before the kill and again after
    for tag, logged in steps.items():
        if tag != "epoch":  # Lightning logs `epoch` beside every other value at the same step
            assert len(logged) == len(set(logged)), f"{tag} logged twice at a step: {logged}"
    assert steps["val/acc_top1"] == [1, 3, 5]
    after = checkpoint_state(run / "checkpoints" / "last.ckpt")
    assert (after["epoch"], after["global_step"]) == (2, 6)
    assert (run / "config.yaml").read_text() == first_config  # the first run's config stays; the resume's is beside it
    assert "FreezeAt" in first_config and "RecordRestored" in (run / "config-resume-1.yaml").read_text()
