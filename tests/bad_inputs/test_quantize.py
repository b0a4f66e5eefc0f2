"""Bad inputs to `visiondistill export --quantize int8`: each is refused with the project's own error naming the
culprit, before any file is written, and the run folder stays as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from visiondistill.reporting.export import ExportError, ExportSpec
from visiondistill.reporting.quantize import calibration_batches, check_quantizable

from ..support.bad_inputs import expect_cli_error, expect_user_error, unchanged


def _best(run: Path) -> str:
    return str(run / "checkpoints" / "best.ckpt")


CLI_CASES = {
    "unknown-quantize-value": (["--quantize", "fp16"], ("unknown --quantize 'fp16'", "int8")),
    "zero-calibration-images": (["--quantize", "int8", "--calibration-images", "0"], ("--calibration-images", "0")),
    "negative-calibration-images": (["--quantize", "int8", "--calibration-images", "-3"], ("--calibration-images",)),
    "zero-latency-runs": (["--quantize", "int8", "--latency-runs", "0"], ("--latency-runs", ">= 1")),
}


@pytest.mark.parametrize("case", CLI_CASES, ids=list(CLI_CASES))
def test_bad_quantize_arguments_are_refused(case, trained_run, tmp_path, capsys):
    extra, names = CLI_CASES[case]
    output = tmp_path / "student.onnx"
    with unchanged(trained_run):
        expect_cli_error(["export", _best(trained_run), "--output", str(output), *extra], capsys, *names)
    assert not output.exists()


def test_checkpoint_outside_its_run_folder_is_refused(trained_run, tmp_path, capsys):
    checkpoint = tmp_path / "loose.ckpt"
    shutil.copy(_best(trained_run), checkpoint)
    expect_cli_error(["export", str(checkpoint), "--quantize", "int8"], capsys, "config.yaml", "loose.ckpt")
    assert not checkpoint.with_suffix(".onnx").exists()


@pytest.mark.parametrize("task", ["pose", "depth"])  # detection, keypoints and multitask are measured (issue 18)
def test_tasks_without_int8_measurement_are_refused(task):
    spec = ExportSpec(torch.nn.Identity(), torch.rand(1, 3, 32, 32), task=task)
    expect_user_error(lambda: check_quantizable(spec), task, "without --quantize", error_type=ExportError)


@pytest.mark.parametrize("count", [0, -1, 2.5], ids=["zero", "negative", "fraction"])
def test_calibration_count_must_be_a_positive_whole_number(count):
    expect_user_error(lambda: calibration_batches(object(), count), "--calibration-images", error_type=ExportError)
