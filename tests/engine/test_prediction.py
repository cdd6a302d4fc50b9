"""predict: one image or a folder, ground truth scored, every bad input naming its file."""
from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from tgcnet.data import sample_root
from tgcnet.engine import predict
from tgcnet.engine.overlay import GT_COLOR


TEST = sample_root() / "test"


def test_predict_single_image_with_ground_truth(run_dir, tmp_path):
    name = sorted((TEST / "images").iterdir())[0]
    rows = predict(run_dir, tmp_path, image=name, text="bilateral pulmonary infection, lower left lung.",
                   mask=TEST / "masks" / f"mask_{name.name}")
    (row,) = rows
    mask = np.asarray(Image.open(tmp_path / f"{name.stem}_mask.png"))
    assert mask.shape == (224, 224) and set(np.unique(mask)) <= {0, 255}  # original resolution, 0/255
    assert row["foreground"] == pytest.approx((mask > 0).mean())
    truth = np.asarray(Image.open(TEST / "masks" / f"mask_{name.name}").convert("L")) > 127
    predicted = mask > 0
    expected = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum()) if predicted.any() or truth.any() else 1.0
    assert row["dice"] == pytest.approx(expected)
    overlay = np.asarray(Image.open(row["overlay"]).convert("RGB"))
    assert overlay.shape[0] > overlay.shape[1] >= 224  # caption band under the image
    colors = {tuple(c) for c in overlay.reshape(-1, 3)}
    assert GT_COLOR in colors


def test_predict_folder(run_dir, tmp_path):
    rows = predict(run_dir, tmp_path, images=TEST / "images", captions=TEST / "prompts.csv", masks=TEST / "masks")
    assert len(rows) == 8 and all("dice" in r for r in rows)
    assert len(list(tmp_path.glob("*_overlay.png"))) == 8 and len(list(tmp_path.glob("*_mask.png"))) == 8
    assert len(list(csv.DictReader(open(tmp_path / "predictions.csv")))) == 8


def test_predict_bad_inputs_name_the_file(run_dir, tmp_path):
    image = sorted((TEST / "images").iterdir())[0]
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        predict(run_dir, tmp_path, image=tmp_path / "nothere.png", text="left lung.")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="corrupt.png"):
        predict(run_dir, tmp_path, image=corrupt, text="left lung.")
    floating = tmp_path / "floating.tif"
    Image.fromarray(np.zeros((32, 32), np.float32)).save(floating)
    with pytest.raises(ValueError, match="floating-point") as err:
        predict(run_dir, tmp_path, image=floating, text="left lung.")
    assert str(err.value).count("floating.tif") == 1, str(err.value)
    with pytest.raises(ValueError, match="empty text"):
        predict(run_dir, tmp_path, image=image, text="   ")
    small = tmp_path / "small_mask.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(small)
    with pytest.raises(ValueError, match="small_mask.png is 32x32"):
        predict(run_dir, tmp_path, image=image, text="left lung.", mask=small)
    with pytest.raises(ValueError, match="either image"):
        predict(run_dir, tmp_path, image=image, text="x", images=TEST / "images")
    # folder mode: every bad row listed at once
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(image, folder / image.name)
    table = tmp_path / "captions.csv"
    table.write_text(f"Image,Description\n{image.name},\nghost.png,left lung.\n")
    with pytest.raises(ValueError, match=r"2 bad row\(s\)") as err:
        predict(run_dir, tmp_path, images=folder, captions=table)
    assert "empty caption" in str(err.value) and "ghost.png" in str(err.value)
    table.write_text("Name,Text\na.png,b\n")
    with pytest.raises(ValueError, match="missing column"):
        predict(run_dir, tmp_path, images=folder, captions=table)


LONG_CAPTION = "bilateral pulmonary infection, " * 30 + "lower left lung."


def test_predict_refuses_over_long_captions_before_writing(run_dir, tmp_path):
    image = sorted((TEST / "images").iterdir())[0]
    with pytest.raises(ValueError, match=r"caption\(s\) longer than the 75 tokens .*\n  .*" + image.name):
        predict(run_dir, tmp_path / "one", image=image, text=LONG_CAPTION)
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(image, folder / image.name)
    table = tmp_path / "captions.csv"
    table.write_text(f'Image,Description\n{image.name},"{LONG_CAPTION}"\n')
    with pytest.raises(ValueError, match="1 caption"):
        predict(run_dir, tmp_path / "many", images=folder, captions=table)
    assert not (tmp_path / "one").exists() and not (tmp_path / "many").exists()


def test_predict_with_flip_tta_averages_the_mirrored_view(run_dir, tmp_path):
    from tgcnet.engine.prediction import Predictor

    image = np.asarray(Image.open(sorted((TEST / "images").iterdir())[0]).convert("L"))
    caption = "unilateral pulmonary infection, lower left lung."
    plain, flip = Predictor(run_dir), Predictor(run_dir, tta="flip")
    mirrored = flip(image[:, ::-1].copy(), "unilateral pulmonary infection, lower right lung.")
    np.testing.assert_allclose(mirrored, flip(image, caption)[:, ::-1], atol=1e-5)
    assert not np.allclose(plain(image, caption), flip(image, caption), atol=1e-4)
    with pytest.raises(ValueError, match="tta must be one of"):
        Predictor(run_dir, tta="rotate")


def test_predict_writes_a_dicom_seg_for_a_dicom_input_equal_to_the_png_mask(run_dir, tmp_path):
    """A DICOM holding a PNG's pixels gives the PNG's mask, written as a SEG that references it."""
    highdicom = pytest.importorskip("highdicom")
    from helpers import dicom_xray

    from tgcnet.data.dataset import load_image

    png = sorted((sample_root() / "test" / "images").iterdir())[0]
    source = dicom_xray(load_image(png))
    dcm = tmp_path / "chest.dcm"
    source.save_as(dcm, enforce_file_format=True)
    caption = "Unilateral pulmonary infection, one infected area, lower left lung."
    png_rows = predict(run_dir, tmp_path / "png", image=png, text=caption)
    rows = predict(run_dir, tmp_path / "seg", image=dcm, text=caption, output_format="dicom-seg")
    assert rows[0]["mask"].endswith("chest_seg.dcm") and (tmp_path / "seg" / "chest_overlay.png").is_file()
    seg = highdicom.seg.segread(rows[0]["mask"])
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SegmentSequence[0].SegmentDescription == caption
    written = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])[0, ..., 0]
    expected = np.asarray(Image.open(png_rows[0]["mask"])) > 0
    assert expected.any()
    np.testing.assert_array_equal(written > 0, expected)


def test_dicom_seg_output_needs_dicom_inputs(run_dir, tmp_path):
    png = sorted((sample_root() / "test" / "images").iterdir())[0]
    with pytest.raises(ValueError, match=f"(?s)needs DICOM inputs; 1 input.*{png.name}: not a DICOM file"):
        predict(run_dir, tmp_path, image=png, text="lower left lung.", output_format="dicom-seg")
    assert not any(tmp_path.iterdir())
