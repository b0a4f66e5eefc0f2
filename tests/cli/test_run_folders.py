"""Run folders are written once: a second ``fit`` is refused, a resume keeps what earlier epochs wrote, and
``validate``/``test`` write into ``<run>/eval/<subcommand>-<checkpoint stem>[-N]/``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from visiondistill.cli import main
from visiondistill.cli.run_folders import (
    LoggerFolder,
    RunFolderError,
    RunFolderExistsError,
    eval_folder,
    holds_run,
    plan_fit,
)

from ..support.bad_inputs import snapshot, unchanged
from ..support.runs import checkpoint_state, event_steps


def _copy(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A writable copy of the session's trained run (and its config, pointed at the copy); returns both."""
    root = tmp_path / "copy"
    shutil.copytree(run, root / "runs" / "kd")
    config = yaml.safe_load((run.parent.parent / "kd.yaml").read_text())
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(root / "runs")
    path = root / "kd.yaml"
    path.write_text(yaml.safe_dump(config))
    return root / "runs" / "kd", path


def test_a_second_fit_into_a_run_folder_is_refused(trained_run: Path, capsys):
    config = trained_run.parent.parent / "kd.yaml"
    with unchanged(trained_run):
        assert main(["fit", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert str(trained_run) in err and "--ckpt_path last" in err
    assert "--trainer.logger.init_args.version=v2" in err and "Traceback" not in err


def test_validate_and_test_write_into_eval_folders_of_their_own(trained_run: Path, tmp_path: Path):
    run, config = _copy(trained_run, tmp_path)
    training = snapshot(run)
    assert main(["validate", "--config", str(config), "--ckpt_path", str(run / "checkpoints" / "best.ckpt")]) == 0
    assert main(["test", "--config", str(config), "--ckpt_path", "last"]) == 0
    assert {k: v for k, v in snapshot(run).items() if not k.startswith("eval/")} == training  # not a byte changed
    evals = sorted(p.name for p in (run / "eval").iterdir())
    assert evals == ["test-last", "validate-best"]  # a second validate of best.ckpt would get validate-best-2
    for name in evals:
        folder = run / "eval" / name
        assert (folder / "config.yaml").is_file() and list(folder.glob("events.out.tfevents.*"))
    # Grad-CAM's maps of the evaluated checkpoint, in the evaluation's folder (the run's own saliency/ is untouched).
    assert list((run / "eval" / "validate-best" / "saliency").glob("epoch_*/maps.npz"))
    assert "val/acc_top1" in event_steps(run / "eval" / "validate-best")
    # The training run's curves hold its two epochs, not the validations' values.
    assert event_steps(run)["val/acc_top1"] == [1, 3]


def test_resume_keeps_the_first_config_events_and_checkpoint_names(trained_run: Path, tmp_path: Path):
    run, config = _copy(trained_run, tmp_path)
    before = snapshot(run)
    assert main(["fit", "--config", str(config), "--trainer.max_epochs=3", "--ckpt_path", "last"]) == 0
    after = snapshot(run)
    kept = [k for k in before if not k.startswith("checkpoints/")]
    assert {k: after[k] for k in kept} == {k: before[k] for k in kept}  # config.yaml, events, saliency/epoch_00*
    assert (run / "config-resume-1.yaml").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]  # no best-v1.ckpt
    assert checkpoint_state(run / "checkpoints" / "last.ckpt")["epoch"] == 2
    assert event_steps(run)["val/acc_top1"] == [1, 3, 5]


# -- the rules without training -------------------------------------------------------------------------------------


def _run_folder(folder: Path, with_last: bool = True) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text("model: {}\n")
    if with_last:
        import torch

        torch.save(
            {"global_step": 4, "loops": {"fit_loop": {"epoch_loop.state_dict": {"_batches_that_stepped": 4}}}},
            folder / "checkpoints" / "last.ckpt",
        )
    return folder


def _logger(save_dir: Path, version: str | int | None) -> LoggerFolder:
    init_args = {"save_dir": str(save_dir), "name": "kd", "version": version}
    return LoggerFolder.from_config(
        {"class_path": "pytorch_lightning.loggers.TensorBoardLogger", "init_args": init_args}
    )


def test_plan_fit_new_resume_and_branch(tmp_path: Path):
    run = _run_folder(tmp_path / "runs" / "kd")
    assert plan_fit(tmp_path / "runs" / "new", None).ckpt_path is None
    with pytest.raises(RunFolderExistsError, match="--ckpt_path last"):
        plan_fit(run, None)
    plan = plan_fit(run, "last")
    assert plan.resume_in_place and plan.ckpt_path == run / "checkpoints" / "last.ckpt" and plan.purge_step == 4
    assert plan.config_name == "config-resume-1.yaml"
    (run / "config-resume-1.yaml").write_text("")
    assert plan_fit(run, str(run / "checkpoints" / "last.ckpt")).config_name == "config-resume-2.yaml"
    branch = plan_fit(tmp_path / "runs" / "branch", str(run / "checkpoints" / "last.ckpt"))
    assert not branch.resume_in_place and branch.config_name == "config.yaml"
    with pytest.raises(RunFolderError, match="holds no run to resume"):
        plan_fit(tmp_path / "runs" / "empty", "last")


def test_unpinned_versions_resume_the_newest_version_with_a_last_checkpoint(tmp_path: Path):
    for version, with_last in ((0, True), (1, True), (2, False)):
        _run_folder(tmp_path / "runs" / "kd" / f"version_{version}", with_last)
    logger = _logger(tmp_path / "runs", None)
    plan = plan_fit(None, "last", logger)
    assert plan.folder == tmp_path / "runs" / "kd" / "version_1" and plan.resume_in_place
    assert logger.init_args["version"] == "version_1"  # the logger is pinned to the resumed folder


def test_eval_folders_are_numbered_next_to_the_checkpoint(tmp_path: Path):
    run = _run_folder(tmp_path / "kd")
    checkpoint = run / "checkpoints" / "best.ckpt"
    first = eval_folder("validate", checkpoint, tmp_path / "elsewhere")
    assert first == run / "eval" / "validate-best"
    first.mkdir(parents=True)
    assert eval_folder("validate", checkpoint, tmp_path) == run / "eval" / "validate-best-2"
    assert eval_folder("test", tmp_path / "model.ckpt", run) == run / "eval" / "test-model"
    assert holds_run(run) and not holds_run(first)
