"""Image files the tests write: 16-bit ramps, TIFF and DICOM (no file is shipped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def ramp16(height: int = 64, width: int = 96) -> np.ndarray:
    """A ``uint16`` ramp from 0 to 65535 over every pixel (row-major), ``height × width``."""
    return np.linspace(0, 65535, height * width).round().astype(np.uint16).reshape(height, width)


def write_png16(path: Path, array: np.ndarray) -> Path:
    """A 16-bit PNG: grayscale through PIL (mode ``I;16``), colour through OpenCV (PIL writes 8-bit colour only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 2:
        Image.fromarray(array.astype(np.uint16)).save(path)
    else:
        import cv2

        cv2.imwrite(str(path), np.ascontiguousarray(array[..., ::-1]).astype(np.uint16))  # OpenCV writes BGR
    return path


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    photometric: str = "MONOCHROME2",
    frames: int = 1,
) -> Path:
    """A minimal uncompressed DICOM image (CT image storage), or one without pixel data when ``pixels`` is ``None``.

    Args:
        path: The file to write.
        pixels: ``uint16`` (unsigned) or ``int16`` (signed) stored values, ``H×W`` (``frames×H×W`` for several).
        slope: RescaleSlope.
        intercept: RescaleIntercept.
        window: ``(WindowCenter, WindowWidth)``, or ``None`` for none in the file.
        photometric: PhotometricInterpretation.
        frames: NumberOfFrames.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    if pixels is not None:
        pixels = np.asarray(pixels)
        dataset.Rows, dataset.Columns = pixels.shape[-2:]
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = photometric
        dataset.BitsAllocated = 16
        dataset.BitsStored = 16
        dataset.HighBit = 15
        dataset.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
        dataset.RescaleSlope = str(slope)
        dataset.RescaleIntercept = str(intercept)
        if frames > 1:
            dataset.NumberOfFrames = frames
        if window is not None:
            dataset.WindowCenter, dataset.WindowWidth = str(window[0]), str(window[1])
        dataset.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path
