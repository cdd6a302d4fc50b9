"""tgcnet.segment: one call from a file, PIL image or array and free text to a mask at the input's size."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from helpers import make_run_dir
from PIL import Image

import tgcnet
from tgcnet.data import sample_root
from tgcnet.data.dataset import load_image
from tgcnet.segmentation import Segmentation, as_image_array, clear_loaded_models

CAPTION = "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def sample_images():
    return sorted((sample_root() / "test" / "images").iterdir())[:3]


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_loaded_models()
    yield
    clear_loaded_models()


def test_segment_a_file_matches_tgcnet_predict(run_dir, sample_images, tmp_path):
    from tgcnet.engine import predict

    result = tgcnet.segment(run_dir, sample_images[0], CAPTION)
    assert isinstance(result, Segmentation)
    height, width = load_image(sample_images[0]).shape[:2]
    assert result.mask.shape == result.probability.shape == (height, width)
    assert result.mask.dtype == bool and result.probability.dtype == np.float32
    assert result.overlay.shape == (height, width, 3) and result.overlay.dtype == np.uint8
    assert result.source == sample_images[0] and result.threshold == 0.5
    rows = predict(run_dir, tmp_path, image=sample_images[0], text=CAPTION)
    written = np.asarray(Image.open(rows[0]["mask"])) > 0
    assert 0 < result.foreground < 1, "the nudged decoder should give a partial mask"
    np.testing.assert_array_equal(result.mask, written)
    assert rows[0]["location"] == "upper left lung; lower right lung"


def test_location_words_are_reported_as_read(run_dir, sample_images):
    result = tgcnet.segment(run_dir, sample_images[0], "infection of the lowerleft  lung")
    assert result.location.phrases == ("lower left lung",)
    assert result.describe_location() == "lower left lung (left = image left half)"
    whole = tgcnet.segment(run_dir, sample_images[0], "pulmonary infection.")
    assert whole.location.phrases == () and "whole image" in whole.describe_location()


@pytest.mark.parametrize("shape", [(37, 50), (37, 50, 3), (300, 41)])
def test_any_size_and_layout_comes_back_at_its_own_size(run_dir, shape):
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    result = tgcnet.segment(run_dir, pixels, CAPTION)
    assert result.mask.shape == shape[:2] and result.overlay.shape == (*shape[:2], 3)
    assert result.source is None


def test_pil_image_uint16_and_float_arrays_read_as_their_files_would(run_dir, sample_images, tmp_path):
    path = sample_images[1]
    from_file = tgcnet.segment(run_dir, path, CAPTION)
    from_pil = tgcnet.segment(run_dir, Image.open(path), CAPTION)
    np.testing.assert_array_equal(from_file.probability, from_pil.probability)
    pixels = load_image(path)
    wide = pixels.astype(np.uint16) * 257       # the same picture at 16 bits: 255 -> 65535
    np.testing.assert_array_equal(tgcnet.segment(run_dir, wide, CAPTION).probability, from_file.probability)
    sixteen = tmp_path / "wide.png"
    Image.fromarray(wide).save(sixteen)
    np.testing.assert_array_equal(tgcnet.segment(run_dir, sixteen, CAPTION).probability, from_file.probability)
    as_float = tgcnet.segment(run_dir, pixels.astype(np.float32) / 255, CAPTION)
    # resizing floats skips the uint8 rounding of the resized image: close, not equal
    assert np.abs(as_float.probability - from_file.probability).max() < 0.05


def test_a_list_equals_the_single_calls(run_dir, sample_images):
    captions = [CAPTION, "unilateral pulmonary infection, lower left lung.", "lower right lung."]
    many = tgcnet.segment(run_dir, list(sample_images), captions)
    assert isinstance(many, list) and len(many) == 3
    for path, caption, result in zip(sample_images, captions, many):
        one = tgcnet.segment(run_dir, path, caption)
        np.testing.assert_array_equal(one.probability, result.probability)
        np.testing.assert_array_equal(one.mask, result.mask)
        assert one.caption == result.caption


def test_a_path_is_loaded_once_and_again_after_it_is_saved_anew(run_dir, sample_images, monkeypatch, tmp_path):
    from tgcnet.engine import prediction

    loads = []
    real = prediction.load_inference_model
    monkeypatch.setattr(prediction, "load_inference_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    run = make_run_dir(tmp_path / "run")
    first = tgcnet.segment(run, sample_images[0], CAPTION)
    tgcnet.segment(str(run), sample_images[1], CAPTION)
    assert len(loads) == 1
    model = tgcnet.TGCNet.from_pretrained(run / "best", knowledge=None)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and name.endswith("bias") and "decoder" in name:
                p.add_(5.0)
    model.save_pretrained(run / "best")
    again = tgcnet.segment(run, sample_images[0], CAPTION)
    assert len(loads) == 2
    assert again.foreground > first.foreground


def test_a_model_in_memory_is_used_as_it_is_and_left_as_it_was(run_dir, sample_images):
    model = tgcnet.TGCNet.from_pretrained(run_dir / "best", knowledge=None)
    model.train()
    in_memory = tgcnet.segment(model, sample_images[0], CAPTION, image_size=64)
    assert model.training, "segment must restore the caller's mode"
    np.testing.assert_allclose(in_memory.probability, tgcnet.segment(run_dir, sample_images[0], CAPTION).probability,
                               atol=1e-5)


def test_threshold_and_flip_tta(run_dir, sample_images):
    plain = tgcnet.segment(run_dir, sample_images[0], CAPTION)
    strict = tgcnet.segment(run_dir, sample_images[0], CAPTION, threshold=0.9)
    assert strict.threshold == 0.9
    np.testing.assert_array_equal(strict.mask, plain.probability > 0.9)
    flipped = tgcnet.segment(run_dir, sample_images[0], CAPTION, tta="flip")
    assert not np.array_equal(flipped.probability, plain.probability)


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims width x height, with no pixel data: enough to be refused unread."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


@pytest.mark.parametrize("size", [(20000, 20000), (9000, 9000)])
def test_huge_images_are_refused_before_decoding(run_dir, tmp_path, size):
    path = tmp_path / "huge.png"
    _png_header_only(path, *size)
    with pytest.raises(ValueError, match=r"huge\.png .*megapixels.*downsample"):
        tgcnet.segment(run_dir, path, CAPTION)


@pytest.mark.parametrize("image, message", [
    (np.zeros((4, 4, 4), np.uint8), r"H x W .* got shape \(4, 4, 4\)"),
    (np.full((8, 8), 2.0), r"values in \[0, 1\], got 2\.\.2"),
    (np.full((8, 8), np.nan, np.float32), "NaN"),
    (np.zeros((8, 8), np.int32), "dtype must be uint8, uint16 or float"),
    (np.zeros((0, 8), np.uint8), "empty"),
    (3.5, "file path, a PIL image or a numpy array"),
])
def test_bad_images_get_one_clear_error(run_dir, image, message):
    with pytest.raises(ValueError, match=message):
        tgcnet.segment(run_dir, image, CAPTION)


def test_bad_captions_models_and_pairings(run_dir, sample_images, tmp_path):
    with pytest.raises(ValueError, match=f"caption of .*{sample_images[0].name} is empty"):
        tgcnet.segment(run_dir, sample_images[0], "   ")
    with pytest.raises(ValueError, match=r"tokens, more than the \d+ the text context holds"):
        tgcnet.segment(run_dir, sample_images[0], "left lung " * 80)
    with pytest.raises(ValueError, match="caption 1 is empty"):
        tgcnet.segment(run_dir, [np.zeros((8, 8), np.uint8)] * 2, [CAPTION, ""])
    with pytest.raises(ValueError, match="2 images and 1 captions"):
        tgcnet.segment(run_dir, list(sample_images[:2]), [CAPTION])
    with pytest.raises(ValueError, match="a list of images and a list of captions"):
        tgcnet.segment(run_dir, list(sample_images[:2]), CAPTION)
    with pytest.raises(FileNotFoundError, match="image not found"):
        tgcnet.segment(run_dir, tmp_path / "missing.png", CAPTION)
    with pytest.raises(FileNotFoundError, match="not found: give a loaded TGCNet"):
        tgcnet.segment(tmp_path / "no-such-run", sample_images[0], CAPTION)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\)"):
        tgcnet.segment(run_dir, sample_images[0], CAPTION, threshold=1.5)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png"):
        tgcnet.segment(run_dir, not_an_image, CAPTION)


def test_as_image_array_keeps_uint8_and_names_the_source(sample_images):
    pixels, source = as_image_array(sample_images[0])
    assert pixels.dtype == np.uint8 and source == sample_images[0]
    np.testing.assert_array_equal(pixels, load_image(sample_images[0]))
