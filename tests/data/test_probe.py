"""Checking a file without decoding its pixels: its size, or the one reason it cannot be used."""
from __future__ import annotations

import numpy as np
from helpers import dicom_xray
from PIL import Image

from tgcnet.data.probe import DICOM_MASK_ADVICE, describe_error, probe_file


def test_sizes_and_reasons(tmp_path):
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(png)
    assert probe_file(png, "image", listed=True) == ((7, 5), None)
    assert probe_file(tmp_path / "gone.png", "mask", listed=False) == (None, f"mask not found ({tmp_path / 'gone.png'})")
    cut = tmp_path / "cut.png"
    cut.write_bytes(png.read_bytes()[:30])
    size, reason = probe_file(cut, "image", listed=True)
    assert size is None and reason.startswith("cannot read image: ") and str(cut) not in reason
    dcm = tmp_path / "x.dcm"
    dicom_xray(np.zeros((5, 7), np.uint8)).save_as(dcm, enforce_file_format=True)
    assert probe_file(dcm, "image", listed=True) == ((7, 5), None)
    assert probe_file(dcm, "mask", listed=True) == (None, f"mask is a DICOM file; {DICOM_MASK_ADVICE}")


def test_describe_error_names_the_type_not_the_path(tmp_path):
    path = tmp_path / "a.png"
    assert describe_error(OSError(f"cannot open '{path}'"), path) == "OSError: cannot open"
    assert describe_error(ValueError(), path) == "ValueError"
