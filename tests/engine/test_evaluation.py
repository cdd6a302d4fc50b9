"""evaluate: metrics.json and per_image.csv, over-long captions named before the first batch."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from tgcnet.data import read_split, sample_root
from tgcnet.engine import evaluate
from tgcnet.guidance import parse_location


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


def test_evaluate_with_flip_tta_scores_the_averaged_views(run_dir, tmp_path):
    plain = evaluate(run_dir, sample_root(), "test", progress=False)
    flip = evaluate(run_dir, sample_root(), "test", out=tmp_path, progress=False, tta="flip")
    assert plain["tta"] == "none" and flip["tta"] == "flip"
    assert json.loads((tmp_path / "metrics.json").read_text())["tta"] == "flip"
    assert flip["dice"] != plain["dice"] and flip["n_images"] == plain["n_images"] == 8
    with pytest.raises(ValueError, match="tta must be one of"):
        evaluate(run_dir, sample_root(), "test", progress=False, tta="rotate")


def test_evaluate_reads_dicom_images_as_their_pngs(run_dir, tmp_path):
    """The embedded test split with every image converted to DICOM (masks stay PNG, found by the
    image's stem) scores exactly as the PNGs do."""
    pytest.importorskip("pydicom")
    from helpers import dicom_xray

    from tgcnet.data.dataset import load_image

    source = sample_root() / "test"
    split = tmp_path / "test"
    (split / "images").mkdir(parents=True)
    shutil.copytree(source / "masks", split / "masks")
    with open(source / "prompts.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        png = source / "images" / row["Image"]
        row["Image"] = png.stem + ".dcm"
        dicom_xray(load_image(png)).save_as(split / "images" / row["Image"], enforce_file_format=True)
    with open(split / "prompts.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    as_png = evaluate(run_dir, sample_root(), "test", progress=False)
    as_dicom = evaluate(run_dir, tmp_path, "test", progress=False)
    for key in ("n_images", "dice", "iou", "pooled_dice", "pooled_iou"):
        assert as_dicom[key] == as_png[key], key
