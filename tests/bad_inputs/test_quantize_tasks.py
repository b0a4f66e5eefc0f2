"""Bad inputs to INT8 export of every task (`visiondistill.reporting.quantize`, `.quantize_tasks`): images of
another size than the exported graph's, a detector graph measured at another size, an empty test split. Each is
refused with `ExportError` naming the sizes or the split and the fix, before an INT8 file is written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visiondistill.models.detectors import create_detector
from visiondistill.reporting.export import ExportError, ExportSpec
from visiondistill.reporting.quantize import quantize_export
from visiondistill.reporting.quantize_tasks import detection_metrics, postprocess

from ..support.bad_inputs import expect_cli_error, expect_user_error, unchanged
from ..support.detection import TINY_STUDENT


class _Batches:
    """A datamodule stand-in whose training and test loaders yield the given batches."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def prepare_data(self) -> None:
        pass

    def setup(self, stage: str) -> None:
        pass

    def train_dataloader(self) -> list:
        return self.batches

    def test_dataloader(self) -> list:
        return self.batches


def test_cli_export_at_another_size_than_the_run_images_is_refused(trained_run, tmp_path, capsys):
    output = tmp_path / "student.onnx"
    argv = ["export", str(trained_run / "checkpoints" / "best.ckpt"), "--output", str(output), "--quantize", "int8"]
    with unchanged(trained_run):
        expect_cli_error([*argv, "--image-size", "64"], capsys, "3×32×32", "3×64×64", "--image-size 32")
    assert not output.exists()  # refused before the fp32 file is written


#: Training batches of each task's shape whose images are not the exported 3×64×64, and their C×H×W.
BATCHES = {
    "keypoint-crops-32px": ([{"image": torch.rand(2, 3, 32, 32), "target": torch.rand(2, 4, 8, 8)}], "3×32×32"),
    "detection-48px": (
        [(torch.rand(2, 3, 48, 48), [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}] * 2)],
        "3×48×48",
    ),
    "grayscale-64px": ([torch.rand(2, 1, 64, 64)], "1×64×64"),
}


@pytest.mark.parametrize("case", BATCHES, ids=list(BATCHES))
def test_calibration_images_of_another_size_are_refused(case, tmp_path):
    batches, shape = BATCHES[case]
    spec = ExportSpec(torch.nn.Identity(), torch.rand(1, 3, 64, 64), task="detection")
    call = lambda: quantize_export(tmp_path / "x.ckpt", spec, tmp_path / "x.onnx", _Batches(batches), 2)  # noqa: E731
    expect_user_error(call, shape, "3×64×64", "--image-size", error_type=ExportError)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.fixture(scope="module")
def detector() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_detector(TINY_STUDENT, num_classes=2).eval()


def test_detector_graph_read_at_another_size_is_refused(detector):
    # 336 locations are those of a 64-px image (16² + 8² + 4²); read as 32-px images they do not fit.
    boxes, scores = np.zeros((1, 336, 4), np.float32), np.zeros((1, 336, 2), np.float32)
    call = lambda: postprocess(detector, boxes, scores, (32, 32))  # noqa: E731
    expect_user_error(call, "336 locations", "32×32", "image size it was exported at", error_type=ExportError)


def test_detection_test_split_without_images_is_refused(detector):
    session = type("Session", (), {"get_inputs": lambda self: [type("Input", (), {"name": "image"})()]})()
    call = lambda: detection_metrics(session, detector, _Batches([]), ["a", "b"])  # noqa: E731
    expect_user_error(call, "test split has no images", error_type=ExportError)
