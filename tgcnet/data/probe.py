"""Checking an image or mask file cheaply: its size, or the one reason it cannot be used.

A whole split is checked before training, so a file is read only as far as needed to know it
decodes: headers and structure, not pixels (except a JPEG missing its end marker).
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from tgcnet.io import DataError

from .dicom import dicom_size, is_dicom

__all__ = ["MASK_SUFFIXES", "DICOM_MASK_ADVICE", "probe_file", "describe_error"]

#: Suffixes of the image files a mask can be; masks are never DICOM (see DICOM_MASK_ADVICE).
MASK_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_MASK_ADVICE = (f"masks must be image files ({', '.join(MASK_SUFFIXES)}): save it as a PNG with 0 for "
                     "background and 255 for the lesion")


def probe_file(path: Path, what: str, listed: bool) -> tuple[tuple[int, int] | None, str | None]:
    """Size of an image file, or the reason it cannot be used.

    Reads the header and verifies the file's structure (PNG chunk CRCs, truncation)
    without decoding pixels, so checking a whole split stays cheap. Pillow's verify does
    not look at JPEG data, so a JPEG without its end marker is decoded to tell a truncated
    file (which would fail mid-training) from one with trailing bytes. DICOM images are
    checked from their header by :func:`~tgcnet.data.dicom.dicom_size`; a DICOM mask is
    refused. ``listed``: the error line already starts with this path, so do not repeat it.
    """
    where = "" if listed else f" ({path})"
    if not path.is_file():
        return None, f"{what} not found{where}"
    if is_dicom(path):
        return _probe_dicom(path, what, where)
    try:
        with Image.open(path) as im:
            size, is_jpeg = im.size, im.format == "JPEG"
            im.verify()
        if is_jpeg and not _ends_with_jpeg_marker(path):
            with Image.open(path) as im:
                im.load()
    except Exception as exc:  # PIL raises many types for broken files
        return None, f"cannot read {what}{where}: {describe_error(exc, path)}"
    return size, None


def _probe_dicom(path: Path, what: str, where: str) -> tuple[tuple[int, int] | None, str | None]:
    if what == "mask":
        return None, f"{what}{where} is a DICOM file; {DICOM_MASK_ADVICE}"
    try:
        return dicom_size(path), None
    except DataError as exc:
        return None, f"cannot read DICOM {what}{where}: {exc.problems[0][1]}"


def describe_error(exc: Exception, path: Path) -> str:
    """'Type: message' of an exception about ``path``, without the path: the caller's message names it once."""
    detail = str(exc).replace(f"'{path}'", "").replace(str(path), "").strip()
    return f"{type(exc).__name__}" + (f": {detail}" if detail else "")


def _ends_with_jpeg_marker(path: Path) -> bool:
    """Whether the file ends with JPEG's end-of-image marker (FF D9), as a complete JPEG does."""
    with open(path, "rb") as f:
        f.seek(max(path.stat().st_size - 2, 0))
        return f.read() == b"\xff\xd9"
