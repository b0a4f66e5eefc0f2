"""The one image reader of the data layer: every bit depth, TIFF and DICOM, scaled to float32 in [0, 1].

`read_image` is what every datamodule (and ``visiondistill predict``) uses to decode an image file:

========================  =====================================================================================
file                      how its values reach [0, 1]
========================  =====================================================================================
8-bit PNG/JPEG/BMP/TIFF   ÷ 255 (grayscale ``L``, ``RGB``; ``1`` bilevel; palette ``P`` through its palette)
16-bit PNG/TIFF           ÷ 65535, grayscale and RGB (PIL alone would clip a 16-bit PNG to 8 bits: almost white)
TIFF of fewer bits        ÷ (2^BitsPerSample − 1), e.g. 12-bit microscopy data ÷ 4095
signed integer TIFF       by the type's range: (x − min) / (max − min), e.g. int16 (x + 32768) ÷ 65535
float TIFF (``F`` mode)   as stored; values outside [0, 1] need an ``intensity_window``
DICOM (``.dcm``)          RescaleSlope/RescaleIntercept, then the window: the data set's ``intensity_window``, else
                          the file's WindowCenter/WindowWidth, else the range of its BitsStored; MONOCHROME1 inverted
========================  =====================================================================================

An ``intensity_window: [low, high]`` (a datamodule argument) replaces the type's range for every file of a data set:
values map linearly, ``low`` → 0 and ``high`` → 1, and are clipped. It is given in the file's own units (raw counts of
a PNG or TIFF, Hounsfield units of a CT DICOM after its rescale), e.g. ``[0, 4095]`` for 12-bit data stored in 16-bit
PNGs, or ``[-160, 240]`` for a soft-tissue CT window.

Alpha channels (``RGBA``, ``LA``, palette transparency) are dropped. What cannot be represented as one 2-D image of
1, 3 (or 4, with alpha) channels fails with an `UnsupportedImageError` naming the file: volumes (multi-frame TIFF,
DICOM, GIF or APNG), more than four channels, complex values, and PIL modes other than those above. DICOM needs
``pydicom`` (``pip install visiondistill[medical]``); without it a ``.dcm`` file fails with an
`OptionalDependencyError` that says so.

Masks are read with `read_mask`: the stored integers, never rescaled (16-bit masks keep labels above 255).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from visiondistill.core.errors import ConfigError
from visiondistill.data.errors import CorruptImageError, DataError, MissingDataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "OptionalDependencyError",
    "UnsupportedImageError",
    "check_image",
    "check_window",
    "read_image",
    "read_mask",
]

#: File name endings that count as images in image folders (case-insensitive).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")

#: What PIL raises for files that are not (complete) images; FileNotFoundError is an OSError too.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
#: PIL modes read as they are (after an exact conversion of palette and colour-space modes to RGB).
_PIL_MODES = ("1", "L", "LA", "I;16", "I;16L", "I;16B", "I;16N", "I", "F", "RGB", "RGBA", "RGBX")
_PIL_TO_RGB = ("P", "PA", "CMYK", "YCbCr")
_TIFF_PHOTOMETRIC = ("MINISBLACK", "MINISWHITE", "RGB", "PALETTE", "YCBCR")
_MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")
#: ITU-R 601-2 luma, the weights of PIL's ``convert("L")``: a colour image read as grayscale looks as it did before.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class UnsupportedImageError(DataError):
    """An image file that decodes but cannot be represented as one 2-D image: a volume, > 4 channels, a rare mode."""


class OptionalDependencyError(DataError, ImportError):
    """A file needs a package that is an optional extra of visiondistill (DICOM: ``visiondistill[medical]``)."""


def check_window(window: Sequence[float] | None, owner: str = "intensity_window") -> tuple[float, float] | None:
    """Validates an intensity window ``[low, high]``.

    Args:
        window: Two numbers with ``low < high``, or ``None`` (no window: the type's range).
        owner: Who asks, quoted in messages.

    Returns:
        ``(low, high)`` as floats, or ``None``.

    Raises:
        ConfigError: When it is not two finite numbers with ``low < high``.

    Example::

        >>> check_window([0, 4095])
        (0.0, 4095.0)
    """
    if window is None:
        return None
    try:
        low, high = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ConfigError(f"{owner} must be two numbers [low, high], got {window!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"{owner} must be two finite numbers [low, high] with low < high, got {window!r}")
    return low, high


def read_image(path: str | Path, *, channels: int | None = None, window: Sequence[float] | None = None) -> np.ndarray:
    """Decodes an image file to a ``float32`` array ``H×W×C`` in [0, 1] (see the module docstring for the scaling).

    Args:
        path: The image file (PNG, JPEG, BMP, TIFF, DICOM, or anything else PIL opens).
        channels: 1 (grayscale: colour images by luma) or 3 (RGB: grayscale repeated); ``None`` keeps the file's
            1 or 3 channels.
        window: Intensity window ``[low, high]`` in the file's units, replacing the type's range.

    Returns:
        Float32 array ``H×W×C``, C-contiguous.

    Raises:
        MissingDataError: When the file does not exist.
        CorruptImageError: When it cannot be decoded (corrupt, truncated, not an image).
        UnsupportedImageError: When it cannot be represented (volume, > 4 channels, unsupported mode or type), or a
            float image lies outside [0, 1] without a window.
        OptionalDependencyError: For DICOM without pydicom installed.
        ConfigError: For a malformed ``window``.

    Example::

        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "ramp.png"
        >>> Image.fromarray(np.array([[0, 32768, 65535]], np.uint16)).save(path)
        >>> read_image(path)[..., 0].round(3).tolist()
        [[0.0, 0.5, 1.0]]
    """
    path = Path(path)
    bounds = check_window(window)
    if not path.is_file():
        raise MissingDataError(f"Image file '{path}' does not exist.", path=path)
    kind = _sniff(path)
    if kind == "dicom":
        array = _read_dicom(path, bounds)
    else:
        if kind == "tiff":
            raw, full_scale = _read_tiff(path)
        elif kind == "png16colour":
            raw, full_scale = _read_png16_colour(path), 65535.0
        else:
            raw, full_scale = _read_pil(path)
        array = _scale(raw, full_scale, bounds, path)
    return _to_channels(array, channels, path)


def read_mask(path: str | Path) -> np.ndarray:
    """Decodes a mask file to its stored integers, ``H×W`` (never rescaled: a 16-bit mask keeps labels above 255).

    Args:
        path: A single-channel PNG, BMP or TIFF of class indices (mode ``L``, ``P``, ``I;16``, ``I``, ``1``).

    Returns:
        The integer array ``H×W`` (``uint8``, ``uint16``, ``int32`` … as stored; bilevel as 0/1).

    Raises:
        MissingDataError: When the file does not exist.
        CorruptImageError: When it cannot be decoded.
        DataError: When it has several channels or non-integer values (a colour or float image, not class indices).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"Mask file '{path}' does not exist.", path=path)
    hint = "masks must be single-channel (mode L or P) PNGs whose pixel values are class indices, not colours."
    if _sniff(path) == "tiff":
        mask, _ = _read_tiff(path)
        if mask.ndim != 2 or mask.dtype.kind not in "uib":
            raise DataError(f"Mask '{path}' is a {mask.dtype} TIFF of shape {mask.shape}; {hint}")
        return mask.astype(np.uint8) if mask.dtype == bool else mask
    try:
        with Image.open(path) as image:
            if image.mode not in _MASK_MODES:
                raise DataError(f"Mask '{path}' is a {image.mode} image; {hint}")
            _check_single_frame(image, path)
            mask = np.asarray(image)
    except _DECODE_ERRORS as error:
        raise CorruptImageError.for_file(path, error) from error
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    return mask.astype(mask.dtype.newbyteorder("=")) if not mask.dtype.isnative else mask


def check_image(path: str | Path) -> tuple[int, int]:
    """Checks an image file from its header, without decoding its pixels, and returns its ``(width, height)``.

    What `read_image` would reject for its structure (a volume, > 4 channels, an unsupported mode, DICOM without pixel
    data) is rejected here, so a data module's ``setup`` fails at once and by file name instead of mid-epoch.

    Raises:
        MissingDataError, CorruptImageError, UnsupportedImageError, OptionalDependencyError: As `read_image`.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"Image file '{path}' does not exist.", path=path)
    kind = _sniff(path)
    if kind == "tiff":
        with _open_tiff(path) as tiff:
            height, width = _tiff_layout(tiff, path)[:2]
            return width, height
    if kind == "dicom":
        dataset = _dicom_dataset(path)
        return int(dataset.get("Columns", 0)), int(dataset.get("Rows", 0))
    try:
        with Image.open(path) as image:
            _check_pil_mode(image, path)
            _check_single_frame(image, path)
            size = image.size
            image.verify()  # headers and checksums, no full decode
    except _DECODE_ERRORS as error:
        raise CorruptImageError.for_file(path, error) from error
    return size


# -- formats -------------------------------------------------------------------------------------------------------


def _sniff(path: Path) -> str:
    """The reader a file needs, from its first bytes (a ``.png`` that is really a TIFF reads as a TIFF)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError as error:
        raise CorruptImageError.for_file(path, error) from error
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[128:132] == b"DICM" or (path.suffix.lower() in (".dcm", ".dicom") and len(head) > 0):
        return "dicom"
    # PNG IHDR: bit depth at byte 24, colour type at 25 (2 = RGB, 6 = RGBA); PIL reads 16-bit colour as 8-bit.
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) > 25 and head[24] == 16 and head[25] in (2, 6):
        return "png16colour"
    return "pil"


def _check_single_frame(image: Image.Image, path: Path) -> None:
    frames = int(getattr(image, "n_frames", 1) or 1)
    if frames > 1:
        raise UnsupportedImageError(
            f"Image file '{path}' holds {frames} frames (a volume or an animation); visiondistill reads 2-D images: "
            "save each frame (slice) as its own file."
        )


def _check_pil_mode(image: Image.Image, path: Path) -> None:
    if image.mode not in _PIL_MODES + _PIL_TO_RGB:
        raise UnsupportedImageError(
            f"Image file '{path}' has the PIL mode {image.mode!r}, which visiondistill does not read; convert it to "
            "grayscale or RGB (8 or 16 bits), or to a float32 TIFF."
        )


def _read_pil(path: Path) -> tuple[np.ndarray, float | None]:
    try:
        with Image.open(path) as image:
            _check_pil_mode(image, path)
            _check_single_frame(image, path)
            source_format, mode = image.format, image.mode
            if mode in _PIL_TO_RGB:
                image = image.convert("RGB")  # an exact conversion: palette look-up, CMYK/YCbCr to RGB
            array = np.asarray(image)
    except _DECODE_ERRORS as error:
        raise CorruptImageError.for_file(path, error) from error
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    # PNG has at most 16 bits per sample: PIL's 32-bit "I" mode holds 16-bit values there.
    full_scale = 65535.0 if mode == "I" and source_format == "PNG" else None
    return array, full_scale


def _read_png16_colour(path: Path) -> np.ndarray:
    level = cv2.utils.logging.getLogLevel()
    # errors only: a damaged file becomes our message, not also OpenCV's warning on stderr
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        buffer = np.fromfile(path, dtype=np.uint8)
        array = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except (OSError, cv2.error) as error:
        raise CorruptImageError.for_file(path, error) from error
    finally:
        cv2.utils.logging.setLogLevel(level)
    if array is None or array.dtype != np.uint16 or array.ndim != 3:
        raise CorruptImageError.for_file(path, "the 16-bit colour PNG could not be decoded")
    return cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA if array.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def _open_tiff(path: Path) -> Any:
    import tifffile

    try:
        return tifffile.TiffFile(path)
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as error:
        raise CorruptImageError.for_file(path, error) from error


def _tiff_layout(tiff: Any, path: Path) -> tuple[int, int, int, list[int]]:
    """``(height, width, channels, order)``: ``order`` moves the first series' axes to ``Y, X, channel``.

    Raises:
        UnsupportedImageError: For a volume (more than one page, or a depth/time axis) or more than four channels.
    """
    series = tiff.series[0]
    sizes = dict(zip(series.axes, series.shape, strict=True))
    extra = {axis: size for axis, size in sizes.items() if axis not in "YXSC" and size > 1}
    if len(tiff.pages) > 1 or extra:
        depth = ", ".join(f"{axis}={size}" for axis, size in extra.items()) or f"{len(tiff.pages)} pages"
        raise UnsupportedImageError(
            f"TIFF file '{path}' is a volume or a stack ({depth}; axes {series.axes}, shape {tuple(series.shape)}); "
            "visiondistill reads 2-D images: save each slice or frame as its own file."
        )
    channel_axes = [axis for axis in "SC" if sizes.get(axis, 1) > 1]
    channels = math.prod(sizes.get(axis, 1) for axis in "SC")
    if channels > 4 or len(channel_axes) > 1:
        raise UnsupportedImageError(
            f"TIFF file '{path}' has {channels} channels (axes {series.axes}, shape {tuple(series.shape)}); "
            "visiondistill reads 1 (grayscale), 3 (RGB) or 4 (RGBA) channels: save the channels you need as an "
            "RGB or grayscale image."
        )
    axes = [axis for axis in series.axes]
    order = [axes.index("Y"), axes.index("X")] + [axes.index(axis) for axis in channel_axes]
    return sizes["Y"], sizes["X"], channels, order


def _read_tiff(path: Path) -> tuple[np.ndarray, float | None]:
    with _open_tiff(path) as tiff:
        _tiff_layout(tiff, path)
        page = tiff.pages[0]
        try:
            array = tiff.series[0].asarray()
        except Exception as error:  # tifffile raises many types for damaged files (ValueError, struct.error, …)
            raise CorruptImageError.for_file(path, error) from error
        axes = tiff.series[0].axes
        bits = int(getattr(page, "bitspersample", 0) or 0)
        photometric = getattr(page.photometric, "name", str(page.photometric))
        colormap = getattr(page, "colormap", None)
        jpeg = getattr(page.compression, "name", "") == "JPEG"
    # YCbCr is decoded to RGB only inside JPEG-compressed TIFFs; stored as is, it is refused with the rare spaces
    if photometric not in _TIFF_PHOTOMETRIC or (photometric == "YCBCR" and not jpeg):
        raise UnsupportedImageError(
            f"TIFF file '{path}' stores {photometric} colours, which visiondistill does not read; save it as "
            "grayscale or RGB (8 or 16 bits), or as a float32 TIFF."
        )
    if photometric == "PALETTE" and colormap is not None:
        array = np.moveaxis(np.asarray(colormap)[:, array], 0, -1)  # the palette's 16-bit RGB colours
        return array, 65535.0 if np.asarray(colormap).max() > 255 else 255.0
    keep = [i for i, axis in enumerate(axes) if axis in "YX" or array.shape[i] > 1]
    array = array.reshape([array.shape[i] for i in keep])
    kept_axes = [axes[i] for i in keep]
    order = [kept_axes.index("Y"), kept_axes.index("X")] + [i for i, a in enumerate(kept_axes) if a not in "YX"]
    array = np.ascontiguousarray(np.transpose(array, order))
    if array.dtype.kind == "c":
        raise UnsupportedImageError(
            f"TIFF file '{path}' holds complex values ({array.dtype}); save the magnitude (or real part) as a float "
            "TIFF."
        )
    if photometric == "MINISWHITE" and array.dtype.kind == "u":
        array = np.iinfo(array.dtype).max - array if bits in (0, array.dtype.itemsize * 8) else (2**bits - 1) - array
    full_scale = None
    if array.dtype.kind == "u" and 0 < bits < array.dtype.itemsize * 8:
        full_scale = float(2**bits - 1)  # e.g. 12-bit data in 16-bit samples: its own range, not 65535
    return array, full_scale


def _scale(array: np.ndarray, full_scale: float | None, window: tuple[float, float] | None, path: Path) -> np.ndarray:
    """Maps the stored values to float32 in [0, 1] (see the module docstring)."""
    if array.dtype == bool:
        return array.astype(np.float32)
    if window is not None:
        low, high = window
        return np.clip((array.astype(np.float32) - low) / (high - low), 0.0, 1.0).astype(np.float32)
    if array.dtype.kind == "u":
        top = full_scale if full_scale is not None else float(np.iinfo(array.dtype).max)
        return np.clip(array.astype(np.float32) / top, 0.0, 1.0)
    if array.dtype.kind == "i":
        if full_scale is not None:
            return np.clip(array.astype(np.float32) / full_scale, 0.0, 1.0)
        info = np.iinfo(array.dtype)
        return ((array.astype(np.float64) - info.min) / (float(info.max) - info.min)).astype(np.float32)
    if array.dtype.kind == "f":
        array = array.astype(np.float32)
        finite = np.isfinite(array)
        low, high = (float(array[finite].min()), float(array[finite].max())) if finite.any() else (0.0, 0.0)
        if not finite.all() or low < 0.0 or high > 1.0:
            found = f"values from {low:g} to {high:g}" + ("" if finite.all() else " and NaN or infinity")
            raise UnsupportedImageError(
                f"Float image '{path}' holds {found}, outside [0, 1]; set the data module's intensity_window: "
                "[low, high] to map them to [0, 1] (e.g. the data's physical range), or save the image scaled to "
                "[0, 1]."
            )
        return array
    raise UnsupportedImageError(f"Image file '{path}' holds {array.dtype} values, which visiondistill does not read.")


def _to_channels(array: np.ndarray, channels: int | None, path: Path) -> np.ndarray:
    if array.ndim == 2:
        array = array[..., None]
    count = array.shape[2]
    if count == 2:  # grayscale + alpha
        array = array[..., :1]
    elif count == 4:  # RGB + alpha
        array = array[..., :3]
    elif count not in (1, 3):
        raise UnsupportedImageError(
            f"Image file '{path}' has {count} channels; visiondistill reads 1 (grayscale), 3 (RGB) or 4 (RGBA)."
        )
    if channels == 1 and array.shape[2] == 3:
        array = (array @ _LUMA)[..., None]
    elif channels == 3 and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1, 3 or None, got {channels!r}")
    return np.ascontiguousarray(array, dtype=np.float32)


# -- DICOM ---------------------------------------------------------------------------------------------------------


def _dicom_dataset(path: Path) -> Any:
    """The file's DICOM data set, checked to hold one 2-D frame of pixel data."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise OptionalDependencyError(
            f"Image file '{path}' is a DICOM file, and reading DICOM needs pydicom: "
            "pip install visiondistill[medical] (or pip install pydicom)."
        ) from None
    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as error:
        raise CorruptImageError.for_file(path, error) from error
    if not any(key in dataset for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        uid = dataset.get("SOPClassUID", "unknown")
        sop_class = getattr(uid, "name", None) or uid
        raise UnsupportedImageError(
            f"DICOM file '{path}' holds no pixel data (SOP class {sop_class}), so it is not an image (e.g. a report "
            "or a presentation state); remove it from the image folder."
        )
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UnsupportedImageError(
            f"DICOM file '{path}' holds {frames} frames (a volume or a cine loop); visiondistill reads 2-D images: "
            "save each frame as its own file."
        )
    return dataset


def _first(value: Any) -> float:
    """A DICOM value that may be multi-valued (WindowCenter ``[40, 400]``): its first number."""
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        return float(value)
    return float(value[0])


def _read_dicom(path: Path, window: tuple[float, float] | None) -> np.ndarray:
    dataset = _dicom_dataset(path)
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # pydicom raises many types (missing JPEG handlers, bad lengths, …)
        raise CorruptImageError.for_file(path, error) from error
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if not photometric.startswith("MONOCHROME"):
        # colour (RGB, YBR converted to RGB by pydicom): no modality units, so the type's range or the window
        return _scale(pixels, None, window, path)
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    values = pixels.astype(np.float64) * slope + intercept
    if window is None and "WindowCenter" in dataset and "WindowWidth" in dataset:
        centre, width = _first(dataset.WindowCenter), _first(dataset.WindowWidth)
        if width > 0:
            window = (centre - width / 2, centre + width / 2)
    if window is None:
        if pixels.dtype.kind == "f":
            window = (float(values.min()), float(values.max()) if values.max() > values.min() else values.min() + 1)
        else:
            bits = int(dataset.get("BitsStored", pixels.dtype.itemsize * 8))
            signed = int(dataset.get("PixelRepresentation", 0)) == 1
            low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            ends = sorted((low * slope + intercept, high * slope + intercept))
            window = (ends[0], ends[1])
    low, high = window
    scaled = np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)
    return 1.0 - scaled if photometric == "MONOCHROME1" else scaled
