from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tgcnet import create_model
from tgcnet.io import save_json_atomic
from tgcnet.data import read_split, sample_root
from tgcnet.engine import evaluate, predict
from tgcnet.engine.inference import resolve_checkpoint
from tgcnet.engine.overlay import GT_COLOR, PRED_COLOR, contour, render_overlay
from tgcnet.guidance import parse_location


TEST = sample_root() / "test"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as the trainer leaves it (best/ + train_config.json), with a briefly trained model."""
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = create_model("tgcnet-tiny", knowledge=None)
    with torch.no_grad():  # bias the decoder so the prediction is not empty: exercises contours and Dice
        for name, p in model.named_parameters():
            if p.requires_grad and name.endswith("bias") and "decoder" in name:
                p.add_(0.3)
    model.save_pretrained(run / "best")
    save_json_atomic({"train": {"image_size": 64, "knowledge": "none", "threshold": 0.5}}, run / "train_config.json")
    return run


def test_resolve_checkpoint(run_dir, tmp_path):
    model_dir, info = resolve_checkpoint(run_dir)
    assert model_dir == run_dir / "best" and info["image_size"] == 64 and info["knowledge"] == "none"
    assert resolve_checkpoint(run_dir / "best")[0] == run_dir / "best"
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="neither a saved model"):
        resolve_checkpoint(tmp_path)


def test_evaluate_writes_metrics_and_per_image_csv(run_dir, tmp_path):
    m = evaluate(run_dir, sample_root(), "test", out=tmp_path, progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("dice", "iou", "pooled_dice", "pooled_iou", "n_images", "threshold", "side_error", "side_error_n"):
        assert saved[key] == m[key], key
    assert m["n_images"] == 8 and m["image_size"] == 64 and m["threshold"] == 0.5
    rows = list(csv.DictReader(open(tmp_path / "per_image.csv")))
    triples = read_split(sample_root(), "test")
    assert [r["name"] for r in rows] == [t.name for t in triples]
    assert [r["caption"] for r in rows] == [t.caption for t in triples]
    assert np.mean([float(r["dice"]) for r in rows]) == pytest.approx(m["dice"])
    assert np.mean([float(r["iou"]) for r in rows]) == pytest.approx(m["iou"])
    one_side = [t for t in triples if parse_location(t.caption).single_side is not None]
    assert m["side_error_n"] == len(one_side) == sum(r["side_error"] != "" for r in rows)
    assert 0 <= m["pooled_dice"] <= 1 and 0 <= m["side_error"] <= 1


def test_predict_single_image_with_ground_truth(run_dir, tmp_path):
    name = sorted((TEST / "images").iterdir())[0]
    rows = predict(run_dir, tmp_path, image=name, text="bilateral pulmonary infection, lower left lung.",
                   mask=TEST / "masks" / f"mask_{name.name}")
    (row,) = rows
    mask = np.asarray(Image.open(tmp_path / f"{name.stem}_mask.png"))
    assert mask.shape == (224, 224) and set(np.unique(mask)) <= {0, 255}  # original resolution, 0/255
    assert row["foreground"] == pytest.approx((mask > 0).mean())
    assert 0 <= row["dice"] <= 1
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


def test_contour_and_overlay_colors():
    mask = np.zeros((10, 10), bool)
    mask[2:7, 3:8] = True
    edge = contour(mask)
    expected = mask.copy()
    expected[3:6, 4:7] = False  # interior of a 5x5 square
    assert np.array_equal(edge, expected)
    assert not contour(np.zeros((5, 5), bool)).any()
    assert contour(np.ones((4, 4), bool)).sum() == 12  # the image border counts as background
    image = np.full((64, 64), 90, np.uint8)
    pred, gt = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
    pred[10:30, 10:30] = True
    gt[30:50, 30:50] = True
    out = np.asarray(render_overlay(image, pred, "lower left lung.", gt=gt, dice=0.0))
    assert out.shape[1] >= 448 and out.shape[0] > out.shape[1]
    colors = {tuple(c) for c in out.reshape(-1, 3)}
    assert PRED_COLOR in colors and GT_COLOR in colors
    with pytest.raises(ValueError, match="ground truth mask is 8x8"):
        render_overlay(image, pred, "x", gt=np.zeros((8, 8), bool))


LONG_CAPTION = "bilateral pulmonary infection, " * 30 + "lower left lung."


def test_evaluate_refuses_over_long_captions_naming_the_file(run_dir, tmp_path):
    from tgcnet.data import DataError

    root = tmp_path / "data"
    shutil.copytree(sample_root(), root)
    table = root / "test" / "prompts.csv"
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows[2][1] = LONG_CAPTION
    with open(table, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(DataError, match=rf"{rows[2][0]}: caption has \d+ tokens"):
        evaluate(run_dir, root, "test", progress=False)
    with pytest.warns(UserWarning, match="skipped 1 entries"):
        metrics = evaluate(run_dir, root, "test", progress=False, skip_bad=True)
    assert metrics["n_images"] == 7


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
