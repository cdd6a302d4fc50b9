"""DICOM images in: single-frame DICOM files read as the uint8 arrays :func:`load_image` gives for PNGs.

The model sees 8-bit pixels, so a DICOM image is reduced to 8 bits the way a viewer
would show it, and in a way that leaves 8-bit data alone: a DICOM holding the same
pixels as an 8-bit PNG gives the identical array, hence the same mask. Grayscale values
go through these steps (DICOM PS3.3 C.11):

1. the modality LUT (Rescale Slope/Intercept, or a Modality LUT Sequence);
2. the first VOI transform the file carries, mapped onto 0..255: a VOI LUT Sequence
   (entry ``v`` of an ``n``-bit LUT gives ``round(v * 255 / (2**n - 1))``), else the first
   Window Center/Width (linear per C.11.2.1.2, or the file's VOI LUT Function), computed
   by pydicom with an output range of 0..255 and rounded;
3. without a VOI transform, unsigned data that no rescale changed is scaled by its
   stored bit depth, ``round(value * 255 / (2**BitsStored - 1))``: 8-bit data comes back
   bit for bit, and 12-bit data gives what :func:`load_image` gives for the same values
   in a 16-bit PNG whose maximum shows it is 12-bit (the PNG's depth is guessed from its
   maximum, the DICOM's is read from Bits Stored, so they differ only for a PNG whose
   data stay far below its depth's maximum). Scaling by the depth rather than by the
   image's own range keeps a dark image dark and a constant image constant;
4. values with no fixed scale (rescaled to e.g. Hounsfield units, signed data, a modality
   LUT) and no VOI transform are stretched from their min..max onto 0..255
   (``round((v - min) * 255 / (max - min))``); a constant image gives zeros;
5. MONOCHROME1 is inverted last (``255 - value``), so bright means dense as in MONOCHROME2.

Colour: RGB is returned as HxWx3, scaled by its stored bit depth like step 3 (the
modality and VOI transforms are defined for grayscale only). pydicom 3 converts
YBR_FULL and YBR_FULL_422 to RGB when decoding (its default ``as_rgb``), and the JPEG
2000 decoders return YBR_ICT/YBR_RCT as RGB; PALETTE COLOR goes through the palette
(``apply_color_lut``), 16-bit palettes scaled by 65535.

Multi-frame files are refused, since one caption describes one image and picking a
frame silently would segment a frame the user did not choose; the message shows how to
save one frame as its own file. Files without the 128-byte preamble and 'DICM' marker
(not DICOM Part 10) are refused too. Masks stay image files (PNG): a DICOM mask is refused
by :func:`tgcnet.data.dataset.load_mask`.

pydicom is an optional extra (``pip install "tgcnet[dicom]"``), imported by the
functions that read a file, so importing tgcnet never needs it.
"""
from __future__ import annotations

import warnings
from collections import abc
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tgcnet.io import DataError

if TYPE_CHECKING:
    from pydicom import Dataset

__all__ = ["DICOM_SUFFIXES", "is_dicom", "read_dicom", "dicom_size"]

#: Suffixes that mark a DICOM file; files with another suffix (or none) count when they carry the 'DICM' marker.
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
EXTRA = 'pip install "tgcnet[dicom]"'
_IMAGE_KEYWORDS = ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
                   "BitsStored", "PixelRepresentation")
_SUPPORTED = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT",
              "PALETTE COLOR")
_DEFER_BYTES = 1024  # elements larger than this are skipped, not read, when only the header is wanted
_UNDEFINED_LENGTH = 0xFFFFFFFF
_COPY_AGAIN = "copy it again from its source"


def is_dicom(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM file: by its suffix, or by the 'DICM' marker after the 128-byte preamble.

    The marker catches what PACS exports write: files with no suffix, or numbered ones.
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(path: str | Path) -> np.ndarray:
    """uint8 HxW (grayscale) or HxWx3 (colour) array of a single-frame DICOM image.

    Values are mapped to 8 bits as the module docstring describes. A file that cannot be
    used (missing, not DICOM, no pixel data, several frames, a transfer syntax no
    installed decoder reads, truncated, damaged) is a DataError naming it and the fix.
    """
    path = Path(path)
    ds = _read(path, header_only=False)
    value = ds.get("PixelData")
    _check(ds, path, present=None if value is None else len(value))
    arr, pi = _decode(ds, path)
    if pi == "PALETTE COLOR":
        return _palette(arr, ds, path)
    if arr.ndim == 3:
        return _by_depth(arr, int(ds.BitsStored))
    out = _grayscale(arr, ds, path)
    return 255 - out if pi == "MONOCHROME1" else out


def dicom_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of a DICOM image, from its header, after the checks :func:`read_dicom` makes.

    Nothing is decoded, so checking a whole split stays cheap: uncompressed pixel data
    are skipped, and a truncated file is caught by comparing the length they claim with
    the bytes the file holds; compressed data are only scanned for their end marker; an
    undecodable syntax is caught by asking pydicom whether a decoder is installed.
    Damage inside compressed data shows only when decoding, in :func:`read_dicom`.
    """
    path = Path(path)
    ds = _read(path, header_only=True)
    _check(ds, path, present=_present_bytes(ds, path))
    return int(ds.Columns), int(ds.Rows)


# --------------------------------------------------------------------------- reading

def _error(path: Path, reason: str) -> DataError:
    return DataError(f"cannot read DICOM image {path}: {reason}", [(path, reason)])


def _describe(exc: Exception, path: Path) -> str:
    from .probe import describe_error  # not at the top: probe imports this module

    return describe_error(exc, path)


def _pydicom(path: Path) -> Any:
    try:
        import pydicom
    except ImportError as exc:
        raise ImportError(f"{path} is a DICOM file, and reading DICOM needs pydicom: {EXTRA}") from exc
    return pydicom


def _read(path: Path, header_only: bool) -> "Dataset":
    """The file's dataset; with ``header_only`` large elements (the pixel data) are left unread."""
    pydicom = _pydicom(path)
    from pydicom.errors import InvalidDicomError

    if not path.is_file():
        raise _error(path, "file not found")
    try:
        with warnings.catch_warnings():
            # pydicom only warns when compressed data or a sequence end before their delimiter
            warnings.filterwarnings("error", message="End of file reached before delimiter")
            return pydicom.dcmread(path, defer_size=_DEFER_BYTES if header_only else None)
    except UserWarning as exc:
        raise _error(path, f"truncated: the file ends before its data do; {_COPY_AGAIN}") from exc
    except InvalidDicomError as exc:
        raise _error(path, "not a DICOM file (no 'DICM' marker after the 128-byte preamble); export it from the "
                           "PACS as DICOM, save it with pydicom's save_as(..., enforce_file_format=True), "
                           "or convert it to PNG") from exc
    except Exception as exc:  # pydicom raises many types for damaged files
        raise _error(path, f"damaged DICOM file ({_describe(exc, path)}); {_COPY_AGAIN}") from exc


def _present_bytes(ds: "Dataset", path: Path) -> int | None:
    """Bytes of pixel data the file really holds; None when unknown (compressed data of undefined length)."""
    from pydicom.dataelem import RawDataElement

    elem = ds.get_item("PixelData", keep_deferred=True)
    if elem is None:
        return None
    if isinstance(elem, RawDataElement) and elem.value is None:  # deferred: only its length was read
        if elem.length == _UNDEFINED_LENGTH:
            return None
        return max(0, min(elem.length, path.stat().st_size - elem.value_tell))
    return len(elem.value)


def _check(ds: "Dataset", path: Path, present: int | None) -> None:
    """Raise the DataError for a file that cannot give one image, judged from its header alone."""
    if "PixelData" not in ds:
        _no_pixels(ds, path)
    missing = [k for k in _IMAGE_KEYWORDS if ds.get(k) in (None, "")]
    if missing:
        raise _error(path, f"its image header lacks {', '.join(missing)}; the file is damaged or was "
                           "written incompletely")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise _error(path, f"it holds {frames} frames and tgcnet reads single-frame images; save the frame "
                           "you want as its own file, e.g. with pydicom: ds = pydicom.dcmread(path); "
                           "ds.set_pixel_data(ds.pixel_array[k], ds.PhotometricInterpretation, ds.BitsStored); "
                           "ds.save_as('frame_k.dcm') (use 'RGB' for a colour image)")
    pi = str(ds.PhotometricInterpretation).strip()
    if pi not in _SUPPORTED:
        raise _error(path, f"photometric interpretation {pi} is not supported (supported: "
                           f"{', '.join(_SUPPORTED)}); convert the image to RGB or MONOCHROME2")
    syntax = _transfer_syntax(ds, path)
    _require_decoder(syntax, path)
    if present is not None and not syntax.is_encapsulated:
        _require_length(ds, path, present)


def _no_pixels(ds: "Dataset", path: Path) -> None:
    """Raise for a file without (integer) Pixel Data: float data, cut short before it, or not an image."""
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise _error(path, "it holds floating-point pixel data (e.g. a parametric map), which has no intensity "
                           "scale to show; export it as an integer image")
    sop = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
    name = (sop.name or str(sop)) if sop else "unknown"
    if "Rows" in ds or "Image Storage" in name:
        raise _error(path, f"truncated: its header describes an image (SOP class {name}), but the file ends "
                           f"before its Pixel Data; {_COPY_AGAIN}")
    raise _error(path, f"it has no Pixel Data (SOP class {name}), so it holds no image to segment; "
                       "pass the DICOM file of the image itself")


def _transfer_syntax(ds: "Dataset", path: Path) -> Any:
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not syntax:
        raise _error(path, "its File Meta Information has no Transfer Syntax UID; the file is damaged")
    return syntax


def _require_decoder(syntax: Any, path: Path) -> None:
    """Raise unless an installed pydicom plugin decodes ``syntax``, naming the packages that would."""
    from pydicom.pixels import get_decoder

    name = f"{syntax.name} ({syntax})" if syntax.is_transfer_syntax else f"{syntax}"
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise _error(path, f"pydicom has no decoder for its transfer syntax {name}; decompress it, e.g. "
                           "gdcmconv --raw in.dcm out.dcm") from None
    if not decoder.is_available:
        raise _error(path, f"no installed package decodes its transfer syntax {name}: "
                           f"{_install_hint(decoder.missing_dependencies)}, or decompress it, e.g. "
                           "gdcmconv --raw in.dcm out.dcm")


def _install_hint(missing: list[str]) -> str:
    """pip commands from pydicom's 'plugin - requires pkg>=x and pkg2>=y' lines (GDCM's wheel is python-gdcm)."""
    commands = []
    for line in missing:
        _, _, needs = line.partition(" - requires ")
        packages = [p.strip().replace("gdcm>=", "python-gdcm>=") for p in needs.split(" and ") if p.strip()]
        if packages:
            commands.append("pip install " + " ".join(f"'{p}'" for p in packages))
    commands.sort(key=lambda c: "gdcm" in c)  # pylibjpeg's wheels first: GDCM's are not on every platform
    return "install one with " + " or ".join(commands) if commands else "install a pydicom decoding plugin"


def _require_length(ds: "Dataset", path: Path, present: int) -> None:
    from pydicom.pixels.utils import get_expected_length

    expected = get_expected_length(ds, unit="bytes")
    if present < expected:
        raise _error(path, f"truncated: its pixel data hold {present} of the {expected} bytes that "
                           f"{ds.Columns}x{ds.Rows} pixels of {ds.BitsAllocated} bits need; {_COPY_AGAIN}")


def _decode(ds: "Dataset", path: Path) -> tuple[np.ndarray, str]:
    """Decoded pixels and their photometric interpretation after decoding (YBR_* become RGB)."""
    from pydicom.pixels import convert_color_space, get_decoder

    try:
        arr, changes = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, as_rgb=True)
    except Exception as exc:  # decoding plugins raise their own types for damaged data
        raise _error(path, f"cannot decode its pixel data ({_describe(exc, path)}); the file is damaged: "
                           f"{_COPY_AGAIN}") from exc
    pi = str(changes.get("photometric_interpretation", ds.PhotometricInterpretation)).strip()
    if pi in ("YBR_FULL", "YBR_FULL_422"):  # only when a plugin ignored as_rgb
        arr, pi = convert_color_space(arr, pi, "RGB"), "RGB"
    return arr, pi


# --------------------------------------------------------------------------- to 8 bits

def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def _by_depth(arr: np.ndarray, bits: int) -> np.ndarray:
    """``round(value * 255 / (2**bits - 1))``, the same expression :func:`load_image` uses for 16-bit PNGs."""
    if bits == 8 and arr.dtype == np.uint8:
        return arr.copy()
    return _to_uint8(arr * (255.0 / (2**bits - 1)))


def _by_range(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:
        return np.zeros(values.shape, np.uint8)
    return _to_uint8((values - lo) * (255.0 / (hi - lo)))


def _rescaled(ds: "Dataset") -> bool:
    """Whether the modality LUT changes the stored values (pydicom applies a rescale only when both are set)."""
    if ds.get("ModalityLUTSequence"):
        return True
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    return slope is not None and intercept is not None and (float(slope), float(intercept)) != (1.0, 0.0)


def _grayscale(arr: np.ndarray, ds: "Dataset", path: Path) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    rescaled = _rescaled(ds)
    values = apply_modality_lut(arr, ds) if rescaled else arr
    try:
        shown = _voi(values, ds)
    except (ValueError, NotImplementedError) as exc:  # pydicom's word on a window or LUT it cannot apply
        raise _error(path, f"its VOI window or LUT cannot be applied ({exc}); fix or remove it") from exc
    if shown is not None:
        return _to_uint8(shown)
    if not rescaled and int(ds.PixelRepresentation) == 0:
        return _by_depth(arr, int(ds.BitsStored))
    return _by_range(values)


def _first(value: Any) -> float | None:
    """The first of a possibly multi-valued DS element; None when absent or empty."""
    if value is None or value == "":
        return None
    if isinstance(value, abc.Sequence) and not isinstance(value, str):  # pydicom's MultiValue
        return float(value[0]) if len(value) else None
    return float(value)


def _voi(values: np.ndarray, ds: "Dataset") -> np.ndarray | None:
    """The file's first VOI transform of ``values``, as floats in 0..255; None when it has none."""
    from pydicom import Dataset
    from pydicom.pixels import apply_voi, apply_windowing

    if ds.get("VOILUTSequence"):
        if not np.issubdtype(values.dtype, np.integer):  # LUT inputs are integers
            values = np.round(values).astype(np.int64)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return apply_voi(values, ds, index=0) * (255.0 / (2**bits - 1))
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is None or width is None:
        return None
    # Same window, output range 0..255: an unsigned 8-bit, unrescaled description of the output.
    window = Dataset()
    window.PhotometricInterpretation = "MONOCHROME2"
    window.PixelRepresentation, window.BitsStored = 0, 8
    window.WindowCenter, window.WindowWidth = center, width
    if ds.get("VOILUTFunction"):
        window.VOILUTFunction = ds.VOILUTFunction
    return apply_windowing(values, window)


def _palette(arr: np.ndarray, ds: "Dataset", path: Path) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    try:
        rgb = apply_color_lut(arr, ds)
    except (ValueError, AttributeError, KeyError) as exc:
        raise _error(path, f"its colour palette cannot be applied ({_describe(exc, path)}); "
                           "convert the image to RGB") from exc
    return rgb.astype(np.uint8) if rgb.dtype == np.uint8 else _by_depth(rgb, 16)
