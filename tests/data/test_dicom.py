"""DICOM images in: pixel values as load_image gives for PNGs, the refusals, and DICOM images in every layout."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.pixels import convert_color_space, get_decoder  # noqa: E402
from pydicom.uid import (  # noqa: E402
    UID, ExplicitVRLittleEndian, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, RLELossless)

from tgcnet.data import DataError, SegmentationDataset, read_split  # noqa: E402
from tgcnet.data.dataset import load_image, load_mask  # noqa: E402
from tgcnet.data.dicom import dicom_size, is_dicom, read_dicom  # noqa: E402

DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
H, W = 32, 48


def make_dicom(arr: np.ndarray, pi: str = "MONOCHROME2", bits_stored: int | None = None, **attrs) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DX
    ds.Modality = "DX"
    ds.set_pixel_data(arr, pi, bits_stored or 8 * arr.dtype.itemsize)
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom(path: Path, arr: np.ndarray, pi: str = "MONOCHROME2", bits_stored: int | None = None,
                **attrs) -> Path:
    return save(make_dicom(arr, pi, bits_stored, **attrs), path)


def row(values, dtype) -> np.ndarray:
    """A 1xN image of ``values``: exact checks read best on a row of hand-picked values."""
    return np.asarray([values], dtype)


def message(exc_info) -> str:
    return str(exc_info.value)


# --------------------------------------------------------------------------- values


def test_8bit_dicom_and_png_with_the_same_pixels_give_identical_arrays(tmp_path):
    # values 10..200: a min..max stretch would change them, the bit-depth rule must not
    arr = np.random.default_rng(0).integers(10, 201, (H, W), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "x.png")
    write_dicom(tmp_path / "x.dcm", arr)
    from_png, from_dicom = load_image(tmp_path / "x.png"), load_image(tmp_path / "x.dcm")
    assert from_dicom.dtype == np.uint8 and from_dicom.shape == (H, W)
    assert np.array_equal(from_dicom, from_png) and np.array_equal(from_dicom, arr)


@pytest.mark.parametrize("bits, peak", [(12, 4080), (16, 65535)])
def test_high_bit_dicom_matches_a_16bit_png_of_the_same_pixels(tmp_path, bits, peak):
    arr = np.random.default_rng(1).integers(0, peak + 1, (H, W), dtype=np.uint16)
    arr[0, 0] = peak  # the PNG's depth is guessed from its maximum; the DICOM states it
    Image.fromarray(arr).save(tmp_path / "x.png")
    write_dicom(tmp_path / "x.dcm", arr, bits_stored=bits)
    from_dicom = load_image(tmp_path / "x.dcm")
    assert np.array_equal(from_dicom, load_image(tmp_path / "x.png"))
    assert np.array_equal(from_dicom, np.round(arr * (255.0 / (2**bits - 1))).astype(np.uint8))


def test_unsigned_data_without_window_is_scaled_by_bits_stored_not_stretched(tmp_path):
    twelve = write_dicom(tmp_path / "a.dcm", row([0, 1, 2048, 4095], np.uint16), bits_stored=12)
    assert read_dicom(twelve).tolist() == [[0, 0, 128, 255]]
    dark = write_dicom(tmp_path / "b.dcm", row([0, 1, 2, 3], np.uint16), bits_stored=12)
    assert read_dicom(dark).tolist() == [[0, 0, 0, 0]]
    constant = write_dicom(tmp_path / "c.dcm", np.full((H, W), 100, np.uint8))
    assert np.array_equal(read_dicom(constant), np.full((H, W), 100, np.uint8))


def test_monochrome1_is_inverted_so_bright_means_dense(tmp_path):
    arr = np.random.default_rng(2).integers(0, 256, (H, W), dtype=np.uint8)
    assert np.array_equal(read_dicom(write_dicom(tmp_path / "m1.dcm", arr, "MONOCHROME1")), 255 - arr)


WINDOWED = [0, 299, 300, 499, 500, 600, 700, 4095]
# LINEAR, center 500, width 401: <= 299.5 -> 0, > 699.5 -> 255, else ((x - 499.5) / 400 + 0.5) * 255
EXPECTED_WINDOW = [0, 0, 0, 127, 128, 192, 255, 255]


def test_window_maps_linearly_onto_0_255_and_the_first_of_several_is_used(tmp_path):
    one = write_dicom(tmp_path / "a.dcm", row(WINDOWED, np.uint16), bits_stored=12, WindowCenter=500,
                      WindowWidth=401)
    assert read_dicom(one).tolist() == [EXPECTED_WINDOW]
    several = write_dicom(tmp_path / "b.dcm", row(WINDOWED, np.uint16), bits_stored=12, WindowCenter=[500, 40],
                          WindowWidth=[401, 80])
    assert read_dicom(several).tolist() == [EXPECTED_WINDOW]
    inverted = write_dicom(tmp_path / "c.dcm", row(WINDOWED, np.uint16), "MONOCHROME1", 12, WindowCenter=500,
                           WindowWidth=401)
    assert read_dicom(inverted).tolist() == [[255 - v for v in EXPECTED_WINDOW]]


def test_rescale_then_window_in_hounsfield_units(tmp_path):
    hu = np.array([-1000, -160, 39, 40, 239, 240])
    # soft-tissue window, center 40 width 400: <= -160 -> 0, > 239 -> 255
    path = write_dicom(tmp_path / "ct.dcm", row(hu + 1024, np.uint16), bits_stored=12, RescaleSlope=1,
                       RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    assert read_dicom(path).tolist() == [[0, 0, 127, 128, 255, 255]]


def test_values_without_fixed_scale_are_stretched_from_min_to_max(tmp_path):
    # stored [24, 126, 279, 534] * 2 - 1000 = [-952, -748, -442, 68]: a range of 1020
    rescaled = write_dicom(tmp_path / "a.dcm", row([24, 126, 279, 534], np.uint16), bits_stored=12,
                           RescaleSlope=2, RescaleIntercept=-1000)
    assert read_dicom(rescaled).tolist() == [[0, 51, 128, 255]]
    signed = write_dicom(tmp_path / "b.dcm", row([-100, 0, 100, 155], np.int16))
    assert read_dicom(signed).tolist() == [[0, 100, 200, 255]]
    constant = write_dicom(tmp_path / "c.dcm", np.full((H, W), 7, np.uint16), bits_stored=12, RescaleSlope=1,
                           RescaleIntercept=-1024)
    assert np.array_equal(read_dicom(constant), np.zeros((H, W), np.uint8))


def test_voi_lut_sequence_is_applied_and_scaled_by_its_entry_depth(tmp_path):
    ds = make_dicom(row([0, 1, 2, 3, 9], np.uint8))
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4, 0, 16])
    item.add_new("LUTData", "US", [0, 50 * 257, 200 * 257, 65535])
    ds.VOILUTSequence = [item]
    assert read_dicom(save(ds, tmp_path / "lut.dcm")).tolist() == [[0, 50, 200, 255, 255]]


def test_rgb_is_returned_as_hxwx3_and_16bit_colour_is_scaled_by_its_depth(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (H, W, 3), dtype=np.uint8)
    out = read_dicom(write_dicom(tmp_path / "rgb.dcm", rgb, "RGB"))
    assert out.shape == (H, W, 3) and np.array_equal(out, rgb)
    wide = np.array([[[0, 4095, 2048], [1, 4094, 100]]], np.uint16)
    assert read_dicom(write_dicom(tmp_path / "rgb12.dcm", wide, "RGB", 12)).tolist() == [
        [[0, 255, 128], [0, 255, 6]]]


def test_ybr_full_is_converted_to_rgb(tmp_path):
    rgb = np.random.default_rng(4).integers(0, 256, (H, W, 3), dtype=np.uint8)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    out = read_dicom(write_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL"))
    assert np.array_equal(out, convert_color_space(ybr, "YBR_FULL", "RGB"))
    assert np.abs(out.astype(int) - rgb).max() <= 2  # a round trip through YCbCr loses at most rounding


def test_palette_colour_goes_through_its_16bit_palette(tmp_path):
    ds = make_dicom(row([0, 1, 2, 3], np.uint8), "PALETTE COLOR")
    palette = {"Red": [0, 65535, 0, 128 * 257], "Green": [0, 0, 65535, 64 * 257], "Blue": [0, 0, 0, 32 * 257]}
    for colour, entries in palette.items():
        ds.add_new(f"{colour}PaletteColorLookupTableDescriptor", "US", [4, 0, 16])
        ds.add_new(f"{colour}PaletteColorLookupTableData", "OW", np.array(entries, "<u2").tobytes())
    out = read_dicom(save(ds, tmp_path / "pal.dcm"))
    assert out.tolist() == [[[0, 0, 0], [255, 0, 0], [0, 255, 0], [128, 64, 32]]]


# --------------------------------------------------------------------------- refusals


def test_multi_frame_is_refused_with_the_frame_count_and_how_to_save_one(tmp_path):
    path = write_dicom(tmp_path / "cine.dcm", np.zeros((3, H, W), np.uint8))
    for read in (read_dicom, dicom_size):
        with pytest.raises(DataError) as err:
            read(path)
        assert str(path) in message(err) and "3 frames" in message(err) and "pixel_array[k]" in message(err)


def test_a_file_without_pixel_data_is_refused(tmp_path):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.Modality = "SR"
    path = save(ds, tmp_path / "report.dcm")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: it has no Pixel Data \(SOP class Basic Text SR"):
        read_dicom(path)
    assert load_image_error(path) == read_dicom_error(path)
    floats = make_dicom(np.zeros((H, W), np.uint8))
    del floats.PixelData
    floats.FloatPixelData = np.zeros((H, W), np.float32).tobytes()
    floats.BitsAllocated = 32
    path = save(floats, tmp_path / "map.dcm")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: it holds floating-point pixel data"):
        dicom_size(path)


def load_image_error(path: Path) -> str:
    with pytest.raises(DataError) as err:
        load_image(path)
    return message(err)


def read_dicom_error(path: Path) -> str:
    with pytest.raises(DataError) as err:
        read_dicom(path)
    return message(err)


def _undecodable() -> UID:
    for syntax in (JPEGLosslessSV1, JPEGLossless, JPEGExtended12Bit):
        if not get_decoder(syntax).is_available:
            return syntax
    pytest.skip("every candidate transfer syntax has a decoder installed here")


def test_a_transfer_syntax_no_installed_package_decodes_names_it_and_what_to_install(tmp_path):
    syntax = _undecodable()
    ds = make_dicom(np.zeros((H, W), np.uint16), bits_stored=12)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
    path = save(ds, tmp_path / "lossless.dcm")
    for read in (read_dicom, dicom_size):
        with pytest.raises(DataError) as err:
            read(path)
        text = message(err)
        assert str(path) in text and syntax.name in text and str(syntax) in text
        assert "pip install 'pylibjpeg>=2.0' 'pylibjpeg-libjpeg>=2.1'" in text
        assert err.value.problems[0][0] == path


def test_truncated_pixel_data_is_caught_by_the_cheap_check_and_by_reading(tmp_path):
    full = write_dicom(tmp_path / "full.dcm", np.zeros((H, W), np.uint16), bits_stored=12).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(full[: len(full) - H * W])  # half of the 2-byte pixels
    for read in (read_dicom, dicom_size):
        with pytest.raises(DataError) as err:
            read(cut)
        assert re.search(rf"{re.escape(str(cut))}: truncated: its pixel data hold {H * W} of the {2 * H * W} bytes",
                         message(err))
    header_only = tmp_path / "header.dcm"
    header_only.write_bytes(full[:400])
    with pytest.raises(DataError, match=rf"{re.escape(str(header_only))}: truncated: .*ends before its Pixel Data"):
        dicom_size(header_only)


def test_truncated_compressed_data_is_caught(tmp_path):
    ds = make_dicom(np.random.default_rng(5).integers(0, 4096, (H, W), dtype=np.uint16), bits_stored=12)
    ds.compress(RLELossless)
    data = save(ds, tmp_path / "rle.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) * 2 // 3])
    for read in (read_dicom, dicom_size):
        with pytest.raises(DataError, match=rf"{re.escape(str(cut))}: truncated"):
            read(cut)


def test_not_dicom_and_missing_files_are_data_errors_naming_them(tmp_path):
    text = tmp_path / "x.dcm"
    text.write_text("patient list\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(text))}: not a DICOM file"):
        load_image(text)
    missing = tmp_path / "gone.dcm"
    with pytest.raises(DataError, match=rf"{re.escape(str(missing))}: file not found"):
        load_image(missing)
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "gone.png"))):  # as PNGs are
        load_image(tmp_path / "gone.png")


def test_is_dicom_by_suffix_or_by_the_dicm_marker(tmp_path):
    arr = np.random.default_rng(6).integers(0, 256, (H, W), dtype=np.uint8)
    source = write_dicom(tmp_path / "a.dcm", arr)
    bare, other = tmp_path / "IM000001", tmp_path / "b.dicom"
    bare.write_bytes(source.read_bytes())
    other.write_bytes(source.read_bytes())
    png = tmp_path / "c.png"
    Image.fromarray(arr).save(png)
    (tmp_path / "d.DCM").write_bytes(b"")
    assert [is_dicom(p) for p in (source, bare, other, tmp_path / "d.DCM", png, tmp_path / "none")] == [
        True, True, True, True, False, False]
    assert np.array_equal(load_image(bare), arr) and np.array_equal(load_image(other), arr)
    assert dicom_size(bare) == (W, H)


def test_a_dicom_mask_is_refused(tmp_path):
    path = write_dicom(tmp_path / "mask.dcm", np.zeros((H, W), np.uint8))
    with pytest.raises(DataError, match=rf"mask {re.escape(str(path))} is a DICOM file; masks must be image files"):
        load_mask(path)


def test_missing_pydicom_asks_for_the_extra_and_importing_tgcnet_data_does_not_need_it(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "x.dcm", np.zeros((H, W), np.uint8))
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImportError, match=r'pip install "tgcnet\[dicom\]"'):
        read_dicom(path)
    code = ("import sys; sys.modules['pydicom'] = None; sys.modules['highdicom'] = None; "
            "import tgcnet.data, tgcnet.data.dataset, tgcnet.data.dicom, tgcnet.dicom_seg")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- layouts


def _to_dicom(root: Path) -> dict[Path, np.ndarray]:
    """Replace every image (not mask) PNG under ``root`` by a DICOM of the same pixels; the pixels by new path."""
    pixels = {}
    for png in sorted(root.rglob("*.png")):
        if png.parent.name.lower() in ("images", "img"):
            arr = np.asarray(Image.open(png))
            pixels[write_dicom(png.with_suffix(".dcm"), arr)] = arr
            png.unlink()
    for table in [*root.rglob("*.csv"), *root.rglob("*.xlsx")]:
        if table.name in ("prompts.csv",) or table.name.endswith("_text.xlsx"):  # tables that name images
            frame = pd.read_csv(table) if table.suffix == ".csv" else pd.read_excel(table)
            frame["Image"] = frame["Image"].str.replace(".png", ".dcm")
            frame.to_csv(table, index=False) if table.suffix == ".csv" else frame.to_excel(table, index=False)
    return pixels


@pytest.mark.parametrize("layout", ["simple", "lvit", "guidedecoder", "sgseg"])
def test_every_layout_reads_dicom_images_with_png_masks(tmp_path, fake_trees, layout):
    expected = fake_trees[layout](tmp_path)
    pixels = _to_dicom(tmp_path)
    triples = read_split(tmp_path, "test")
    assert [(t.name, t.caption) for t in triples] == [(n.replace(".png", ".dcm"), c) for n, c in expected["test"]]
    assert all(t.image_path.suffix == ".dcm" and t.mask_path.suffix == ".png" for t in triples)
    item = SegmentationDataset(triples)[0]
    arr = pixels[triples[0].image_path]
    assert np.array_equal((item["image"][0] * 255).round().numpy().astype(np.uint8), arr)
    assert item["mask"].sum() > 0


def test_split_checks_report_dicom_problems_size_mismatch_and_orphans(tmp_path, fake_trees):
    fake_trees["simple"](tmp_path)
    _to_dicom(tmp_path)
    images = tmp_path / "test" / "images"
    write_dicom(images / "test_0.dcm", np.zeros((16, 8), np.uint8))  # masks are 8x8
    (images / "test_1.dcm").write_bytes((images / "test_1.dcm").read_bytes()[:-20])
    write_dicom(images / "extra.dcm", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError) as err:
        read_split(tmp_path, "test")
    problems = dict(err.value.problems)
    assert "size mismatch: image 8x16 but mask 8x8" in problems[images / "test_0.dcm"]
    assert "cannot read DICOM image: truncated: its pixel data hold 44 of the 64 bytes" in problems[
        images / "test_1.dcm"]
    assert "caption missing" in problems[images / "extra.dcm"]
    assert len(problems) == 3
