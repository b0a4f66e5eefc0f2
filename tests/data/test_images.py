"""`read_image`: every bit depth and format reaches [0, 1] with its full range, and every datamodule reads through it.

Each test writes its own files. The 16-bit ramp is the case of issue 12: PIL's ``convert("L")`` (the old path)
clipped it to 8 bits, almost all white; `read_image` keeps all of its 65536 levels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from visiondistill.data import ImageFolderClassification, MaskFolderSegmentation
from visiondistill.data.detection import CocoDetectionDataset
from visiondistill.data.images import check_image, read_image, read_mask
from visiondistill.data.keypoints.coco import CocoKeypointsFile, KeypointInstance
from visiondistill.data.keypoints.dataset import KeypointCrops
from visiondistill.data.segmentation import MaskFolderDataset
from visiondistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD, classification_transforms

from ..support.images import ramp16, write_dicom, write_png16


def test_16_bit_png_ramp_keeps_its_full_range(tmp_path: Path):
    ramp = ramp16(64, 96)
    path = write_png16(tmp_path / "ramp.png", ramp)
    with Image.open(path) as image:  # the old path: PIL's 8-bit conversion clips everything above 255
        old = np.asarray(image.convert("L"))
    assert (old == 255).mean() > 0.99 and len(np.unique(old)) == 25  # 99.6 % white; 25 levels of 6144 left
    new = read_image(path)
    assert new.shape == (64, 96, 1) and new.dtype == np.float32
    assert new.min() == 0.0 and new.max() == 1.0
    assert len(np.unique(new)) == len(np.unique(ramp)) == 64 * 96  # every level survives
    np.testing.assert_allclose(new[..., 0], ramp / 65535.0, atol=1e-7)


def test_8_bit_grayscale_and_rgb_png_divide_by_255(tmp_path: Path):
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.stack([gray, 255 - gray, gray // 2], axis=-1)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(read_image(tmp_path / "gray.png")[..., 0], gray / 255.0, atol=1e-7)
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png"), rgb / 255.0, atol=1e-7)


def test_16_bit_rgb_png_keeps_16_bits_per_channel(tmp_path: Path):
    ramp = ramp16(32, 48)
    rgb = np.stack([ramp, 65535 - ramp, ramp // 2], axis=-1)
    image = read_image(write_png16(tmp_path / "rgb16.png", rgb))
    assert image.shape == (32, 48, 3)
    np.testing.assert_allclose(image, rgb / 65535.0, atol=1e-7)  # channel order kept (OpenCV decodes BGR)
    assert len(np.unique(image[..., 0])) == 32 * 48  # PIL alone would give at most 256 levels


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["8-bit", "16-bit"])
def test_grayscale_and_rgb_tiff_scale_by_their_type(tmp_path: Path, dtype):
    top = np.iinfo(dtype).max
    gray = (np.linspace(0, 1, 20 * 30) * top).round().astype(dtype).reshape(20, 30)
    tifffile.imwrite(tmp_path / "gray.tif", gray)
    tifffile.imwrite(tmp_path / "rgb.tif", np.stack([gray, gray // 2, top - gray], axis=-1), photometric="rgb")
    np.testing.assert_allclose(read_image(tmp_path / "gray.tif")[..., 0], gray / top, atol=1e-7)
    rgb = read_image(tmp_path / "rgb.tif")
    assert rgb.shape == (20, 30, 3) and rgb[..., 0].max() == 1.0 and rgb[..., 2].min() == 0.0
    assert check_image(tmp_path / "rgb.tif") == (30, 20)  # (width, height) from the header


def test_float_tiff_is_read_as_stored_or_through_a_window(tmp_path: Path):
    values = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    tifffile.imwrite(tmp_path / "unit.tif", values)
    np.testing.assert_array_equal(read_image(tmp_path / "unit.tif")[..., 0], values)
    tifffile.imwrite(tmp_path / "physical.tif", values * 500 - 100)  # e.g. a physical quantity, -100 … 400
    windowed = read_image(tmp_path / "physical.tif", window=[-100, 400])[..., 0]
    np.testing.assert_allclose(windowed, values, atol=1e-6)


def test_intensity_window_maps_12_bit_data_in_16_bit_files(tmp_path: Path):
    twelve_bit = np.array([[0, 1024, 4095, 5000]], np.uint16)  # 5000: above the window, clipped
    path = write_png16(tmp_path / "12bit.png", twelve_bit)
    assert read_image(path)[0, 2, 0] == pytest.approx(4095 / 65535)  # the type's range: dark
    np.testing.assert_allclose(read_image(path, window=[0, 4095])[0, :, 0], [0, 1024 / 4095, 1, 1], atol=1e-6)


def test_palette_and_rgba_images_read_as_their_colours(tmp_path: Path):
    indices = np.array([[0, 1], [2, 1]], np.uint8)
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_image(tmp_path / "palette.png")[0, 0], [1, 0, 0])
    np.testing.assert_array_equal(read_image(tmp_path / "palette.png")[1, 0], [0, 0, 1])
    Image.new("RGBA", (5, 3), (255, 128, 0, 7)).save(tmp_path / "rgba.png")
    rgba = read_image(tmp_path / "rgba.png")
    assert rgba.shape == (3, 5, 3)  # alpha dropped
    np.testing.assert_allclose(rgba[0, 0], [1, 128 / 255, 0], atol=1e-7)


def test_channels_convert_grayscale_to_rgb_and_colour_to_luma(tmp_path: Path):
    path = write_png16(tmp_path / "ramp.png", ramp16(8, 8))
    rgb = read_image(path, channels=3)
    assert rgb.shape == (8, 8, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "red.png")
    assert read_image(tmp_path / "red.png", channels=1)[0, 0, 0] == pytest.approx(0.299)  # PIL's "L" weights


def test_dicom_applies_rescale_and_the_files_window(tmp_path: Path):
    pytest.importorskip("pydicom")
    stored = np.array([[0, 1000, 1064, 2000]], np.uint16)  # Hounsfield units after the intercept: -1024 … 976
    path = write_dicom(tmp_path / "ct.dcm", stored, intercept=-1024, window=(40, 400))  # soft tissue: -160 … 240
    np.testing.assert_allclose(read_image(path)[0, :, 0], [0, 136 / 400, 0.5, 1], atol=1e-6)
    # the data set's window overrides the file's: here the full range of these values
    np.testing.assert_allclose(read_image(path, window=[-1024, 976])[0, :, 0], [0, 0.5, 0.532, 1], atol=1e-6)
    inverted = write_dicom(tmp_path / "m1.dcm", stored, window=(1000, 2000), photometric="MONOCHROME1")
    np.testing.assert_allclose(read_image(inverted)[0, :, 0], [1, 0.5, 0.468, 0], atol=1e-6)


def test_dicom_without_a_window_uses_its_stored_range(tmp_path: Path):
    pytest.importorskip("pydicom")
    path = write_dicom(tmp_path / "plain.dcm", np.array([[0, 65535]], np.uint16), slope=2.0, intercept=10.0)
    np.testing.assert_allclose(read_image(path, channels=3)[0, :, 1], [0, 1], atol=1e-6)


def test_masks_keep_their_integer_labels(tmp_path: Path):
    labels = np.array([[0, 1], [300, 65535]], np.uint16)
    write_png16(tmp_path / "mask16.png", labels)
    np.testing.assert_array_equal(read_mask(tmp_path / "mask16.png"), labels)
    tifffile.imwrite(tmp_path / "mask.tif", labels)
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.tif"), labels)


def test_eval_pipeline_gives_the_same_tensor_for_uint8_and_float_input():
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3)).astype(np.uint8)
    pipeline = classification_transforms(32, train=False)
    from_uint8 = pipeline(image=image)["image"]
    from_float = pipeline(image=image.astype(np.float32) / 255.0)["image"]
    torch.testing.assert_close(from_uint8, from_float, atol=2e-2, rtol=0)  # uint8 resize rounds to integers


# -- every datamodule reads through `read_image` ---------------------------------------------------------------


def unnormalise(tensor: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return tensor * std + mean


def test_image_folder_classification_reads_16_bit_images(tmp_path: Path):
    for split in ("train", "val"):
        write_png16(tmp_path / split / "dim" / "a.png", np.full((40, 40), 1000, np.uint16))
        write_png16(tmp_path / split / "bright" / "b.png", np.full((40, 40), 50000, np.uint16))
    module = ImageFolderClassification(str(tmp_path), image_size=32, batch_size=2, num_workers=0, augment=False)
    module.setup("fit")
    images, labels = next(iter(module.val_dataloader()))
    values = {int(label): float(unnormalise(image).mean()) for image, label in zip(images, labels, strict=True)}
    names = module.class_names
    assert values[names.index("dim")] == pytest.approx(1000 / 65535, abs=1e-4)  # the old path: 1.0 for both
    assert values[names.index("bright")] == pytest.approx(50000 / 65535, abs=1e-4)


def test_image_folder_applies_the_intensity_window(tmp_path: Path):
    for split in ("train", "val"):
        write_png16(tmp_path / split / "a" / "x.png", np.full((8, 8), 2048, np.uint16))
    module = ImageFolderClassification(
        str(tmp_path), image_size=8, num_workers=0, augment=False, in_channels=1, intensity_window=[0, 4096]
    )
    module.setup("fit")
    image, _ = module.val_dataset[0]
    mean, std = np.mean(IMAGENET_MEAN), np.mean(IMAGENET_STD)
    assert float(image.mean()) * std + mean == pytest.approx(0.5, abs=1e-4)


def test_mask_folder_segmentation_reads_a_16_bit_image(tmp_path: Path):
    for split in ("train", "val"):
        write_png16(tmp_path / split / "images" / "a.png", ramp16(32, 32))
        (tmp_path / split / "masks").mkdir()
        Image.fromarray(np.eye(32, dtype=np.uint8)).save(tmp_path / split / "masks" / "a.png")
    module = MaskFolderSegmentation(
        str(tmp_path), num_classes=2, image_size=32, num_workers=0, augment=False, in_channels=1
    )
    module.setup("fit")
    image, mask = module.val_dataset[0]
    raw = image[0] * float(np.mean(IMAGENET_STD)) + float(np.mean(IMAGENET_MEAN))
    assert float(raw.min()) == pytest.approx(0.0, abs=1e-5) and float(raw.max()) == pytest.approx(1.0, abs=1e-5)
    assert len(torch.unique(image)) > 1000  # the old path made it a constant tensor
    assert int(mask.sum()) == 32


def test_mask_folder_keeps_16_bit_mask_labels(tmp_path: Path):
    write_png16(tmp_path / "images" / "a.png", ramp16(4, 4))
    labels = np.zeros((4, 4), np.uint16)
    labels[0, 0] = 300
    write_png16(tmp_path / "masks" / "a.png", labels)
    _, mask = MaskFolderDataset(tmp_path, num_classes=301, ignore_index=None)[0]
    assert int(mask[0, 0]) == 300


def test_coco_detection_reads_a_16_bit_image(tmp_path: Path):
    write_png16(tmp_path / "images" / "a.png", ramp16(24, 40))
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 24}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    image, target = CocoDetectionDataset(tmp_path / "coco.json", tmp_path / "images")[0]
    assert image.shape == (3, 24, 40) and float(image.min()) == 0.0 and float(image.max()) == 1.0
    assert len(torch.unique(image)) == 24 * 40


def test_keypoint_crops_read_a_16_bit_image(tmp_path: Path):
    write_png16(tmp_path / "a.png", ramp16(64, 64))
    instance = KeypointInstance(
        annotation_id=1,
        image_id=1,
        file_name="a.png",
        bbox=np.array([8, 8, 48, 48], np.float32),
        area=48.0 * 48.0,
        keypoints=np.array([[20, 20, 2], [40, 40, 2]], np.float32),
    )
    crops = KeypointCrops(CocoKeypointsFile([instance], 2, ["a", "b"]), tmp_path, input_size=32, heatmap_stride=4)
    image = crops[0]["image"]
    assert image.shape == (3, 32, 32) and len(torch.unique(image[0])) > 500  # 8 bits would give at most 256
