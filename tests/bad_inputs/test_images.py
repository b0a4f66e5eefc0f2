"""Bad image files, image folders and `visiondistill predict` inputs: each refused with our own error, naming the file.

Every case writes its malformed input itself; the predict cases also check that the run folder holding the
checkpoint is left byte for byte as it was and that no output folder appears.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from visiondistill.core.errors import ConfigError
from visiondistill.data import ImageFolderClassification, MaskFolderDataset
from visiondistill.data.errors import CorruptImageError, DataError, MissingDataError
from visiondistill.data.images import OptionalDependencyError, UnsupportedImageError, check_image, read_image
from visiondistill.models import ClassifierSpec
from visiondistill.tasks import ClassificationTask, SegmentationTask

from ..support import segmentation
from ..support.bad_inputs import expect_cli_error, expect_user_error, unchanged
from ..support.images import ramp16, write_dicom, write_png16


def _png_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    rng = np.random.default_rng(0)
    path = Path(__import__("tempfile").mkdtemp()) / "source.png"
    Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


def corrupt_png(folder: Path) -> Path:
    data = bytearray(_png_bytes())
    data[60:200] = bytes(140)  # zeroes over the compressed pixel data: the header is fine, the pixels are not
    (path := folder / "corrupt.png").write_bytes(bytes(data))
    return path


def truncated_png(folder: Path) -> Path:
    (path := folder / "truncated.png").write_bytes(_png_bytes()[: len(_png_bytes()) // 2])
    return path


def text_named_png(folder: Path) -> Path:
    (path := folder / "notes.png").write_text("these are my notes, not an image\n")
    return path


def truncated_png16_colour(folder: Path) -> Path:
    full = write_png16(folder / "full.png", np.stack([ramp16(32, 32)] * 3, axis=-1)).read_bytes()
    (path := folder / "half16.png").write_bytes(full[: len(full) // 2])
    return path


def tiff_volume(folder: Path) -> Path:
    tifffile.imwrite(path := folder / "volume.tif", np.zeros((5, 16, 16), np.uint16), photometric="minisblack")
    return path


def tiff_five_channels(folder: Path) -> Path:
    array = np.zeros((16, 16, 5), np.uint8)
    tifffile.imwrite(path := folder / "five.tif", array, photometric="minisblack", planarconfig="contig")
    return path


def tiff_lab(folder: Path) -> Path:
    Image.new("LAB", (8, 8)).save(path := folder / "lab.tif")  # CIELAB colours: no exact RGB meaning here
    return path


def tiff_complex(folder: Path) -> Path:
    tifffile.imwrite(path := folder / "complex.tif", np.zeros((8, 8), np.complex64))
    return path


def tiff_float_out_of_range(folder: Path) -> Path:
    tifffile.imwrite(path := folder / "kelvin.tif", np.full((8, 8), 300.0, np.float32))
    return path


def animated_gif(folder: Path) -> Path:
    frames = [Image.new("L", (8, 8), value) for value in (0, 128, 255)]
    frames[0].save(path := folder / "movie.gif", save_all=True, append_images=frames[1:])
    return path


def dicom_without_pixels(folder: Path) -> Path:
    pytest.importorskip("pydicom")
    return write_dicom(folder / "report.dcm", None)


def dicom_multi_frame(folder: Path) -> Path:
    pytest.importorskip("pydicom")
    return write_dicom(folder / "cine.dcm", np.zeros((3, 8, 8), np.uint16), frames=3)


def dicom_not_dicom(folder: Path) -> Path:
    pytest.importorskip("pydicom")
    (path := folder / "scan.dcm").write_bytes(b"\x00" * 64)
    return path


#: (id, writer, expected error, words the message must hold besides the file's path)
FILE_CASES: list[tuple[str, Callable[[Path], Path], type, tuple[str, ...]]] = [
    ("corrupt-png", corrupt_png, CorruptImageError, ("Cannot read image file",)),
    ("truncated-png", truncated_png, CorruptImageError, ("Cannot read image file",)),
    ("text-named-png", text_named_png, CorruptImageError, ("not an image",)),
    ("truncated-16-bit-colour-png", truncated_png16_colour, CorruptImageError, ("Cannot read image file",)),
    ("tiff-volume", tiff_volume, UnsupportedImageError, ("volume", "Q=5")),
    ("tiff-5-channels", tiff_five_channels, UnsupportedImageError, ("5 channels",)),
    ("tiff-cielab-mode", tiff_lab, UnsupportedImageError, ("CIELAB",)),
    ("tiff-complex", tiff_complex, UnsupportedImageError, ("complex",)),
    ("float-tiff-outside-0-1", tiff_float_out_of_range, UnsupportedImageError, ("300", "intensity_window")),
    ("animated-gif", animated_gif, UnsupportedImageError, ("3 frames",)),
    ("dicom-without-pixel-data", dicom_without_pixels, UnsupportedImageError, ("no pixel data",)),
    ("dicom-multi-frame", dicom_multi_frame, UnsupportedImageError, ("3 frames",)),
    ("dcm-that-is-not-dicom", dicom_not_dicom, CorruptImageError, ("Cannot read image file",)),
]


@pytest.mark.parametrize(("writer", "error_type", "words"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_bad_image_file_is_refused_by_name(tmp_path: Path, writer, error_type, words):
    path = writer(tmp_path)
    expect_user_error(lambda: read_image(path), str(path), *words, error_type=error_type)


@pytest.mark.parametrize(
    "writer", [tiff_volume, tiff_five_channels, animated_gif, text_named_png], ids=lambda w: w.__name__
)
def test_setup_check_refuses_what_reading_would(tmp_path: Path, writer):
    path = writer(tmp_path)
    expect_user_error(lambda: check_image(path), str(path), error_type=DataError)


def test_dicom_without_pydicom_names_the_extra(tmp_path: Path, monkeypatch):
    pytest.importorskip("pydicom")
    path = write_dicom(tmp_path / "ct.dcm", np.zeros((4, 4), np.uint16))
    monkeypatch.setitem(sys.modules, "pydicom", None)  # `import pydicom` now raises ImportError
    monkeypatch.setitem(sys.modules, "pydicom.errors", None)
    error = expect_user_error(
        lambda: read_image(path), str(path), "pip install visiondistill[medical]", error_type=OptionalDependencyError
    )
    assert isinstance(error, ImportError)


def test_missing_image_file(tmp_path: Path):
    path = tmp_path / "gone.png"
    expect_user_error(lambda: read_image(path), str(path), "does not exist", error_type=MissingDataError)


@pytest.mark.parametrize("window", [[5, 1], [0], ["low", "high"], [0, float("inf")]], ids=str)
def test_malformed_intensity_window(tmp_path: Path, window):
    path = write_png16(tmp_path / "a.png", ramp16(4, 4))
    expect_user_error(lambda: read_image(path, window=window), "[low, high]", str(window), error_type=ConfigError)


def test_empty_image_folder(tmp_path: Path):
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
    module = ImageFolderClassification(str(tmp_path), num_workers=0)
    expect_user_error(lambda: module.setup("fit"), str(tmp_path / "train"), "No images", error_type=DataError)


def test_a_five_channel_tiff_in_an_image_folder_fails_at_setup(tmp_path: Path):
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / "cat" / "ok.png")
    bad = tiff_five_channels(tmp_path / "val" / "cat")
    module = ImageFolderClassification(str(tmp_path), num_workers=0)
    expect_user_error(lambda: module.setup("fit"), str(bad), "5 channels", error_type=UnsupportedImageError)


def test_mask_of_another_size_than_its_image(tmp_path: Path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    write_png16(image := tmp_path / "images" / "scan.png", ramp16(32, 48))
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(mask := tmp_path / "masks" / "scan.png")
    dataset = MaskFolderDataset(tmp_path, num_classes=2)
    expect_user_error(dataset.verify, str(image), str(mask), "48x32", "32x32", error_type=DataError)
    expect_user_error(lambda: dataset[0], str(image), str(mask), error_type=DataError)


def test_colour_mask_is_not_class_indices(tmp_path: Path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    tifffile.imwrite(mask := tmp_path / "masks" / "a.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    dataset = MaskFolderDataset(tmp_path, num_classes=2)
    expect_user_error(lambda: dataset.load_mask(0), str(mask), "class indices", error_type=DataError)


# -- visiondistill predict -----------------------------------------------------------------------------------------


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """A run folder holding a tiny classification student checkpoint and a teacher checkpoint of another task."""
    folder = tmp_path / "runs" / "student"
    (folder / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    for task, name in (
        (ClassificationTask(student=ClassifierSpec(name="test_resnet"), num_classes=3), "best.ckpt"),
        (SegmentationTask(student=segmentation.TINY_STUDENT, num_classes=3), "segmenter.ckpt"),
    ):
        hparams = {**dict(task.hparams), "_class_path": f"visiondistill.tasks.{type(task).__name__}"}
        torch.save({"hyper_parameters": hparams, "state_dict": task.state_dict()}, folder / "checkpoints" / name)
    (folder / "notes.txt").write_text("not a checkpoint")
    return folder


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "red.png")
    return folder


def predict_cases(run_folder: Path, images: Path, tmp_path: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    best = str(run_folder / "checkpoints" / "best.ckpt")
    out = str(tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    (empty / "readme.txt").write_text("no images here")
    with_corrupt = tmp_path / "with_corrupt"
    with_corrupt.mkdir(exist_ok=True)
    Image.new("RGB", (8, 8)).save(with_corrupt / "a.png")
    bad = text_named_png(with_corrupt)
    teacher = str(run_folder / "checkpoints" / "segmenter.ckpt")
    return {
        "missing-folder": (
            [best, str(tmp_path / "nowhere"), "--out", out],
            (str(tmp_path / "nowhere"), "does not exist"),
        ),
        "not-a-checkpoint": ([str(run_folder / "notes.txt"), str(images), "--out", out], ("notes.txt",)),
        "missing-checkpoint": (
            [str(run_folder / "last.ckpt"), str(images), "--out", out],
            ("last.ckpt", "does not exist"),
        ),
        "folder-without-images": ([best, str(empty), "--out", out], (str(empty), "No images")),
        "corrupt-image-in-folder": ([best, str(with_corrupt), "--out", out], (str(bad), "Cannot read image file")),
        "teacher-of-another-task": (
            [best, str(images), "--out", out, "--explain", "--teacher", teacher],
            ("segmenter.ckpt", "segmentation", "classification"),
        ),
        "bad-top-k": ([best, str(images), "--out", out, "--top-k", "0"], ("--top-k", "0")),
        "bad-intensity-window": ([best, str(images), "--out", out, "--intensity-window", "9", "1"], ("low < high",)),
    }


PREDICT_CASES = [
    "missing-folder",
    "not-a-checkpoint",
    "missing-checkpoint",
    "folder-without-images",
    "corrupt-image-in-folder",
    "teacher-of-another-task",
    "bad-top-k",
    "bad-intensity-window",
]


@pytest.mark.parametrize("case", PREDICT_CASES)
def test_predict_refuses_bad_input(tmp_path: Path, run_folder: Path, images: Path, capsys, case: str):
    argv, names = predict_cases(run_folder, images, tmp_path)[case]
    with unchanged(run_folder):
        expect_cli_error(["predict", *argv], capsys, *names)
    assert not (tmp_path / "out").exists()  # nothing written when the input is refused
