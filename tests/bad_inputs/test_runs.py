"""Bad run folders and checkpoints on the command line: each is refused with the project's own error naming the culprit,
in bounded time, and no byte of an existing run folder changes."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from visiondistill.cli import VisionDistillCLI
from visiondistill.cli.run_folders import RunFolderError, RunFolderExistsError
from visiondistill.models.checkpoints import CheckpointError

from ..support.bad_inputs import expect_cli_error, expect_user_error, unchanged


def _config(run: Path) -> Path:
    return run.parent.parent / "kd.yaml"


def _edited(run: Path, tmp_path: Path, **student) -> Path:
    """The run's config with other student arguments (a file: dotted overrides do not reach dataclass arguments)."""
    config = yaml.safe_load(_config(run).read_text())
    config["model"]["init_args"]["student"].update(student)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _without_last(run: Path, tmp_path: Path) -> Path:
    """A run folder that stopped before its first epoch ended: config and best.ckpt, no last.ckpt."""
    folder = tmp_path / "runs" / "stopped"
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "config.yaml", folder / "config.yaml")
    return folder


def _other_task(run: Path, tmp_path: Path) -> Path:
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    checkpoint["hyper_parameters"]["_class_path"] = "visiondistill.tasks.SegmentationTask"
    path = tmp_path / "segmentation.ckpt"
    torch.save(checkpoint, path)
    return path


def _truncated(run: Path, tmp_path: Path) -> Path:
    data = (run / "checkpoints" / "best.ckpt").read_bytes()
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(data[: len(data) // 2])
    return path


def _plain_weights(run: Path, tmp_path: Path) -> Path:
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    return path


# Each case: (argv builder from the trained run and tmp_path, names the message must hold).
Case = tuple[Callable[[Path, Path], list[str]], tuple[str, ...]]
CASES: dict[str, Case] = {
    "second-fit-into-a-run-folder": (
        lambda run, tmp: ["fit", "--config", str(_config(run))],
        ("already holds a run", "--ckpt_path last", "--trainer.logger.init_args.version=v2"),
    ),
    "resume-without-last-ckpt": (
        lambda run, tmp: [
            "fit",
            "--config",
            str(_config(run)),
            "--trainer.logger.init_args.name=stopped",
            f"--trainer.logger.init_args.save_dir={_without_last(run, tmp).parent}",
            "--ckpt_path",
            "last",
        ],
        ("stopped/checkpoints/last.ckpt does not exist", "version=v2"),
    ),
    "resume-from-a-missing-file": (
        lambda run, tmp: ["fit", "--config", str(_config(run)), "--ckpt_path", str(tmp / "nowhere.ckpt")],
        ("nowhere.ckpt", "no such checkpoint file"),
    ),
    "validate-a-missing-file": (
        lambda run, tmp: ["validate", "--config", str(_config(run)), "--ckpt_path", str(tmp / "gone.ckpt")],
        ("gone.ckpt", "no such checkpoint file"),
    ),
    "checkpoint-of-another-task": (
        lambda run, tmp: ["validate", "--config", str(_config(run)), "--ckpt_path", str(_other_task(run, tmp))],
        ("segmentation.ckpt", "SegmentationTask", "ClassificationTask"),
    ),
    "truncated-checkpoint": (
        lambda run, tmp: ["validate", "--config", str(_config(run)), "--ckpt_path", str(_truncated(run, tmp))],
        ("truncated.ckpt", "cannot read checkpoint"),
    ),
    "not-a-visiondistill-checkpoint": (
        lambda run, tmp: ["test", "--config", str(_config(run)), "--ckpt_path", str(_plain_weights(run, tmp))],
        ("weights.pt", "not a visiondistill student checkpoint"),
    ),
    "validate-without-a-checkpoint": (
        lambda run, tmp: ["validate", "--config", str(_config(run))],
        ("needs trained weights", "--ckpt_path", "kd/checkpoints/best.ckpt"),
    ),
    "test-best-of-a-folder-without-it": (
        lambda run, tmp: [
            "test",
            "--config",
            str(_config(run)),
            "--trainer.logger.init_args.name=stopped",
            f"--trainer.logger.init_args.save_dir={_without_last(run, tmp).parent}",
            "--ckpt_path",
            "best",
        ],
        ("stopped", "no checkpoints/best.ckpt", "--ckpt_path PATH.ckpt"),
    ),
    "resume-with-another-student": (
        lambda run, tmp: ["fit", "--config", str(_edited(run, tmp, name="test_efficientnet")), "--ckpt_path", "last"],
        ("last.ckpt", "holds another student", "name: test_resnet", "name: test_efficientnet"),
    ),
    "resume-with-another-class-count": (
        lambda run, tmp: [
            "fit",
            "--config",
            str(_config(run)),
            "--model.init_args.num_classes=3",
            "--ckpt_path",
            "last",
        ],
        (
            "last.ckpt",
            "weights of another shape",
            "num_classes 6 in the checkpoint, 3 in the config",
            "without --ckpt_path",
        ),
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_run_input_is_refused_on_one_screen(case: str, trained_run: Path, tmp_path: Path, capsys):
    build, names = CASES[case]
    argv = build(trained_run, tmp_path)
    with unchanged(trained_run):
        message = expect_cli_error(argv, capsys, *names)
    assert len(message.strip().splitlines()) <= 8, message  # one screen


@pytest.mark.parametrize(
    ("case", "error_type"),
    [
        ("second-fit-into-a-run-folder", RunFolderExistsError),
        ("resume-without-last-ckpt", RunFolderError),
        ("checkpoint-of-another-task", CheckpointError),
        ("resume-with-another-student", CheckpointError),
    ],
)
def test_the_refusals_are_the_projects_error_types(case: str, error_type: type, trained_run: Path, tmp_path: Path):
    build, names = CASES[case]
    argv = build(trained_run, tmp_path)
    with unchanged(trained_run):
        expect_user_error(lambda: VisionDistillCLI(args=argv), *names, error_type=error_type)
