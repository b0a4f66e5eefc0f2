"""`visiondistill report` on a run logged with Lightning's CSVLogger, and on curves it cannot read."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from visiondistill.cli import main
from visiondistill.reporting import read_run, write_report
from visiondistill.reporting.document import Heading, Paragraph
from visiondistill.reporting.report import _unread_curve_blocks
from visiondistill.reporting.runs import read_curves, read_metrics_csv

from ..support.cli import tiny_overrides

SCRATCH = Path(__file__).resolve().parents[2] / "configs" / "classification" / "shapes_student_scratch.yaml"


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory) -> Path:
    """A real two-epoch `visiondistill fit` of the scratch student, logged with CSVLogger."""
    tmp_path = tmp_path_factory.mktemp("csv_run")
    config = yaml.safe_load(SCRATCH.read_text())
    config["trainer"]["logger"]["class_path"] = "pytorch_lightning.loggers.CSVLogger"
    edited = tmp_path / "scratch_csv.yaml"
    edited.write_text(yaml.safe_dump(config))
    argv = ["fit", "--config", str(edited), *tiny_overrides(tmp_path, "scratch_csv", num_test=4)]
    assert main([*argv, "--trainer.max_epochs=2"]) == 0
    run = tmp_path / "runs" / "scratch_csv"
    assert (run / "metrics.csv").is_file() and not list(run.glob("events.out.tfevents.*"))
    return run


def _column(path: Path, tag: str) -> list[float]:
    with path.open(newline="") as handle:
        return [float(row[tag]) for row in csv.DictReader(handle) if row.get(tag)]


def test_the_curves_of_a_csv_run_are_read_per_epoch(csv_run: Path):
    run = read_run(csv_run)
    assert [epoch for epoch, _ in run.scalars["val/acc_top1"]] == [1, 2]
    assert [value for _, value in run.scalars["val/acc_top1"]] == _column(csv_run / "metrics.csv", "val/acc_top1")
    assert run.epochs == 2 and run.unreadable == []


def test_the_report_of_a_csv_run_plots_its_curves(csv_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    markdown, _ = write_report([csv_run], out, num_images=4, model_cards=False, log=lambda *_: None, explanations=False)
    text = markdown.read_text()
    assert "## Curves" in text and (tmp_path / "out" / "curves_task.png").is_file()
    assert "Curves not read" not in text and "could not read" not in capsys.readouterr().err


def test_unreadable_columns_and_loggers_are_named(tmp_path: Path):
    (tmp_path / "metrics.csv").write_text("epoch,step,val/acc,train/loss\n0,3,0.5,oops\n1,7,0.75,1.5\n")
    scalars, problems = read_metrics_csv(tmp_path / "metrics.csv")
    assert scalars == {"val/acc": [(1, 0.5), (2, 0.75)], "train/loss": [(2, 1.5)]}
    assert problems == [f"{tmp_path / 'metrics.csv'}: column 'train/loss': 1 value(s) are not numbers"]
    config = {"trainer": {"logger": {"class_path": "pytorch_lightning.loggers.WandbLogger"}}}
    _, _, unreadable = read_curves(tmp_path, config)
    assert unreadable[-1] == "curves logged with WandbLogger: only TensorBoardLogger and CSVLogger logs are read"


def test_a_run_without_logs_says_so_in_the_report_and_on_stderr(tmp_path: Path, capsys):
    _, _, unreadable = read_curves(tmp_path)
    assert unreadable == [f"no curves: {tmp_path} holds no TensorBoard event files and no metrics.csv"]

    class _Run:
        name = "kd"

    run = _Run()
    run.unreadable = unreadable
    blocks = _unread_curve_blocks([run])
    assert blocks[0] == Heading("Curves not read") and isinstance(blocks[1], Paragraph)
    assert f"kd: no curves: {tmp_path}" in blocks[1].text
    assert f"could not read the curves of kd: no curves: {tmp_path}" in capsys.readouterr().err
