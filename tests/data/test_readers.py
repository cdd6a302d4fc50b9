from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from tgcnet.data import LAYOUTS, DataError, Triple, detect_layout, read_split
from tgcnet.data.readers import MAX_LISTED


def _pairs(triples: list[Triple]) -> list[tuple[str, str]]:
    return [(t.name, t.caption) for t in triples]


@pytest.mark.parametrize("layout", ["simple", "lvit", "sgseg"])
def test_layout_reads_every_split_in_file_order(tmp_path, fake_trees, layout):
    expected = fake_trees[layout](tmp_path)
    assert detect_layout(tmp_path) == layout
    for split in ("train", "valid", "test"):
        triples = read_split(tmp_path, split)
        assert _pairs(triples) == expected[split]
        for t in triples:
            assert t.image_path.is_file() and t.mask_path.is_file()
            assert t.image_path != t.mask_path
    assert _pairs(read_split(tmp_path, "val", layout=layout)) == expected["valid"]


def test_lvit_masks_share_the_image_name_and_xlsx_may_sit_beside_the_folders(tmp_path, fake_trees):
    expected = fake_trees["lvit"](tmp_path, xlsx_inside=False)
    triples = read_split(tmp_path, "valid")
    assert _pairs(triples) == expected["valid"]
    assert all(t.mask_path == tmp_path / "Val_Folder" / "labelcol" / t.name for t in triples)


def test_guidedecoder_valid_is_last_20_percent_of_train_csv_and_captions_are_cleaned(tmp_path, fake_trees):
    expected = fake_trees["guidedecoder"](tmp_path, n_train=10)
    assert detect_layout(tmp_path) == "guidedecoder"
    train, valid, test = (read_split(tmp_path, s) for s in ("train", "valid", "test"))
    assert _pairs(train) == expected["train"][:8]
    assert _pairs(valid) == expected["train"][8:]
    assert _pairs(test) == expected["test"]
    t = valid[0]
    assert t.image_path == tmp_path / "Train" / "Images" / t.name
    assert t.mask_path == tmp_path / "Train" / "GTs" / f"mask_{t.name}"
    # noise removed, words (typos included) and case kept
    assert "  " not in t.caption and t.caption.startswith("Bilateral") and "midlle" in t.caption


def test_detect_layout_names_what_it_looked_for(tmp_path):
    (tmp_path / "random").mkdir()
    with pytest.raises(ValueError) as err:
        detect_layout(tmp_path)
    msg = str(err.value)
    for needle in ("prompts.csv", "_Folder", "prompt/{train,test}.csv", "annotation.json", str(tmp_path)):
        assert needle in msg
    with pytest.raises(FileNotFoundError):
        detect_layout(tmp_path / "missing")


def test_detect_layout_refuses_to_guess_between_two(tmp_path, fake_trees):
    fake_trees["simple"](tmp_path)
    fake_trees["sgseg"](tmp_path)
    with pytest.raises(ValueError, match="several layouts"):
        detect_layout(tmp_path)
    assert len(read_split(tmp_path, "train", layout="sgseg")) == 5


def test_bad_split_and_layout_names(tmp_path, fake_trees):
    fake_trees["simple"](tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        read_split(tmp_path, "training")
    with pytest.raises(ValueError, match="layout must be one of"):
        read_split(tmp_path, "train", layout="coco")
    assert set(LAYOUTS) == {"simple", "lvit", "guidedecoder", "sgseg"}


def test_missing_annotation_file_is_named(tmp_path, fake_trees):
    fake_trees["simple"](tmp_path, sizes={"train": 2})
    with pytest.raises(FileNotFoundError, match="test"):
        read_split(tmp_path, "test")


def test_missing_columns_are_reported(tmp_path, png, mask_png):
    png(tmp_path / "train" / "images" / "a.png")
    mask_png(tmp_path / "train" / "masks" / "mask_a.png")
    pd.DataFrame({"image": ["a.png"], "text": ["x"]}).to_csv(tmp_path / "train" / "prompts.csv", index=False)
    with pytest.raises(DataError, match=r"missing column\(s\) \['Image', 'Description'\]"):
        read_split(tmp_path, "train")


def _bad_tree(root: Path, png, mask_png) -> dict[str, str]:
    """A simple-layout split with one good triple and one of every problem; returns name -> expected words."""
    split = root / "train"
    rows = []

    def add(name, caption, image=True, mask=True, image_size=(8, 8), mask_size=(8, 8)):
        if image:
            png(split / "images" / name, size=image_size)
        if mask:
            mask_png(split / "masks" / f"mask_{name}", size=mask_size)
        rows.append((name, caption))

    add("good.png", "left lung.")
    add("noimage.png", "left lung.", image=False)
    add("nomask.png", "left lung.", mask=False)
    add("mismatch.png", "left lung.", mask_size=(16, 8))
    add("nocaption.png", "")
    add("dup.png", "left lung.")
    rows.append(("dup.png", "right lung."))
    add("corrupt.png", "left lung.")
    (split / "images" / "corrupt.png").write_bytes(b"this is not a png")
    add("truncated.png", "left lung.", image_size=(64, 64))
    data = (split / "images" / "truncated.png").read_bytes()
    (split / "images" / "truncated.png").write_bytes(data[: len(data) // 2])
    png(split / "images" / "orphan.png")  # on disk, but no caption row
    pd.DataFrame(rows, columns=["Image", "Description"]).to_csv(split / "prompts.csv", index=False)
    return {"noimage.png": "image not found", "nomask.png": "mask not found", "mismatch.png": "size mismatch",
            "nocaption.png": "caption missing or empty", "dup.png": "duplicate name", "corrupt.png": "cannot read image",
            "truncated.png": "cannot read image", "orphan.png": "caption missing"}


def test_every_bad_entry_is_listed_in_one_error(tmp_path, png, mask_png):
    expected = _bad_tree(tmp_path, png, mask_png)
    with pytest.raises(DataError) as err:
        read_split(tmp_path, "train")
    msg = str(err.value)
    lines = msg.splitlines()
    for name, words in expected.items():
        hits = [line for line in lines if f"images/{name}:" in line]
        assert hits, f"{name} not listed in:\n{msg}"
        assert all(words in line for line in hits), (name, hits)
    assert "good.png" not in msg
    assert "8 x 16" not in msg and "8x8 but mask 16x8" in msg
    assert "9 bad of 10 entries" in msg  # dup.png counts twice, orphan.png once
    assert "skip_bad" in msg
    assert len(err.value.problems) == 9
    assert isinstance(err.value, ValueError)


def test_skip_bad_warns_once_with_the_count_and_keeps_the_good(tmp_path, png, mask_png):
    _bad_tree(tmp_path, png, mask_png)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        triples = read_split(tmp_path, "train", skip_bad=True)
    assert [t.name for t in triples] == ["good.png"]
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "skipped 9 bad entries" in text and "corrupt.png" in text


def test_long_listings_are_capped_with_a_count(tmp_path, png, mask_png):
    split = tmp_path / "train"
    n_bad = MAX_LISTED + 7
    names = [f"m{i:02d}.png" for i in range(n_bad)] + ["ok.png"]
    for name in names:
        png(split / "images" / name)
    mask_png(split / "masks" / "mask_ok.png")
    pd.DataFrame({"Image": names, "Description": ["x"] * len(names)}).to_csv(split / "prompts.csv", index=False)
    with pytest.raises(DataError) as err:
        read_split(tmp_path, "train")
    msg = str(err.value)
    assert "... and 7 more" in msg
    assert msg.count("mask not found") == MAX_LISTED
    assert len(err.value.problems) == n_bad


def test_all_bad_is_an_error_even_when_skipping(tmp_path, png):
    png(tmp_path / "train" / "images" / "a.png")
    pd.DataFrame({"Image": ["a.png"], "Description": ["x"]}).to_csv(tmp_path / "train" / "prompts.csv", index=False)
    with pytest.raises(DataError, match="no usable triples"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_split(tmp_path, "train", skip_bad=True)


def test_sgseg_split_missing_from_annotation(tmp_path, fake_trees):
    fake_trees["sgseg"](tmp_path)
    path = tmp_path / "prompts" / "annotation.json"
    data = json.loads(path.read_text())
    del data["test"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="no 'test' entry"):
        read_split(tmp_path, "test")


def test_real_qata_mini_reads_cleanly(qata_mini_root):
    assert detect_layout(qata_mini_root) == "simple"
    sizes = {}
    for split in ("train", "valid", "test"):
        triples = read_split(qata_mini_root, split)
        sizes[split] = len(triples)
        assert len({t.name for t in triples}) == len(triples)
        assert all(t.caption and t.caption == " ".join(t.caption.split()) for t in triples)
        assert all(t.mask_path.name == f"mask_{t.name}" for t in triples)
        with Image.open(triples[0].image_path) as im:
            assert im.size == (224, 224) and im.mode == "L"
    assert sizes == {"train": 600, "valid": 150, "test": 300}


# --------------------------------------------------------------------------- unreadable annotation files

def test_empty_prompts_csv_is_a_data_error_naming_it(tmp_path, png, mask_png):
    png(tmp_path / "train" / "images" / "a.png")
    mask_png(tmp_path / "train" / "masks" / "mask_a.png")
    table = tmp_path / "train" / "prompts.csv"
    table.write_bytes(b"")
    with pytest.raises(DataError, match=rf"{re.escape(str(table))}: empty.*columns Image and Description") as err:
        read_split(tmp_path, "train")
    assert err.value.problems and err.value.problems[0][0] == table


def test_corrupt_lvit_xlsx_is_a_data_error_naming_it(tmp_path, fake_trees):
    fake_trees["lvit"](tmp_path)
    table = tmp_path / "Train_Folder" / "Train_text.xlsx"
    for junk in (bytes(range(256)) * 4, b"PK\x03\x04" + bytes(range(256)) * 4):  # the second: BadZipFile
        table.write_bytes(junk)
        with pytest.raises(DataError, match=rf"{re.escape(str(table))}: not a readable Excel workbook") as err:
            read_split(tmp_path, "train")
        assert err.value.problems[0][0] == table
    table.write_bytes(b"")
    with pytest.raises(DataError, match=rf"{re.escape(str(table))}.*empty"):
        read_split(tmp_path, "train")


def test_empty_sgseg_annotation_is_a_data_error_naming_it(tmp_path, fake_trees):
    fake_trees["sgseg"](tmp_path)
    table = tmp_path / "prompts" / "annotation.json"
    table.write_text("")
    with pytest.raises(DataError, match=rf"{re.escape(str(table))}: not valid JSON"):
        read_split(tmp_path, "train")


# --------------------------------------------------------------------------- masks, missing splits, bad files

def test_simple_finds_the_mask_whatever_its_extension(tmp_path, png, mask_png):
    split = tmp_path / "train"
    png(split / "images" / "x.jpg")
    mask_png(split / "masks" / "mask_x.png")
    png(split / "images" / "y.png")
    mask_png(split / "masks" / "mask_y.png")
    pd.DataFrame({"Image": ["x.jpg", "y.png"], "Description": ["a", "b"]}).to_csv(split / "prompts.csv", index=False)
    x, y = read_split(tmp_path, "train")
    assert x.image_path == split / "images" / "x.jpg" and x.mask_path == split / "masks" / "mask_x.png"
    assert y.mask_path == split / "masks" / "mask_y.png"


def _drop_split(root: Path, layout: str, split: str) -> None:
    """Remove one split of a fake tree: its folder, or its entry in SGSeg's annotation.json."""
    if layout == "sgseg":
        path = root / "prompts" / "annotation.json"
        data = json.loads(path.read_text())
        del data[split]
        path.write_text(json.dumps(data))
    else:
        folder = split if layout == "simple" else {"valid": "Val", "test": "Test"}[split] + "_Folder"
        shutil.rmtree(root / folder)


@pytest.mark.parametrize("layout", ["simple", "lvit", "sgseg"])
def test_missing_validation_split_says_how_to_train_without_one(tmp_path, fake_trees, layout):
    fake_trees[layout](tmp_path)
    _drop_split(tmp_path, layout, "valid")
    for split in ("valid", "val"):
        with pytest.raises((FileNotFoundError, DataError)) as err:
            read_split(tmp_path, split)
        msg = str(err.value)
        assert "--val-split none" in msg and "val_split=None" in msg and str(tmp_path) in msg, msg
    _drop_split(tmp_path, layout, "test")
    with pytest.raises((FileNotFoundError, DataError)) as err:
        read_split(tmp_path, "test")
    assert "--val-split" not in str(err.value)  # only the validation split can be turned off


@pytest.mark.parametrize("problem, words", [
    ("corrupt_image", "cannot read image"), ("corrupt_mask", "cannot read mask"),
    ("truncated_jpeg", "cannot read image"), ("missing_image", "image not found"),
    ("missing_mask", "mask not found"), ("mask_size", "size mismatch: image 8x8 but mask 16x8"),
])
def test_one_bad_file_is_one_data_error_naming_it(tmp_path, png, mask_png, problem, words):
    split = tmp_path / "train"
    png(split / "images" / "good.png")
    mask_png(split / "masks" / "mask_good.png")
    name = "bad.jpg" if problem == "truncated_jpeg" else "bad.png"
    image, mask = split / "images" / name, split / "masks" / f"mask_{name}"
    png(image, size=(64, 64) if problem == "truncated_jpeg" else (8, 8))
    mask_png(mask, size=(16, 8) if problem == "mask_size" else (64, 64) if problem == "truncated_jpeg" else (8, 8))
    if problem == "corrupt_image":
        image.write_bytes(b"not an image")
    elif problem == "corrupt_mask":
        mask.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    elif problem == "truncated_jpeg":
        image.write_bytes(image.read_bytes()[:-200])
    elif problem == "missing_image":
        image.unlink()
    elif problem == "missing_mask":
        mask.unlink()
    pd.DataFrame({"Image": ["good.png", name], "Description": ["a", "b"]}).to_csv(split / "prompts.csv", index=False)
    with pytest.raises(DataError) as err:
        read_split(tmp_path, "train")
    assert "1 bad of 2 entries" in str(err.value)
    assert [p for p, _ in err.value.problems] == [image]
    reason = err.value.problems[0][1]
    assert words in reason
    if problem in ("corrupt_mask", "missing_mask", "mask_size"):
        assert str(mask) in reason


# --------------------------------------------------------------------------- missing masks (semi-supervised)

@pytest.mark.parametrize("layout", ["simple", "lvit", "sgseg"])
def test_missing_masks_are_an_error_that_names_semi_supervised_training(tmp_path, fake_trees, layout):
    fake_trees[layout](tmp_path)
    train = read_split(tmp_path, "train")
    for t in train[:2]:
        t.mask_path.unlink()
    with pytest.raises(DataError) as err:
        read_split(tmp_path, "train")
    msg = str(err.value)
    assert "2 bad of 5 entries" in msg and msg.count("mask not found") == 2
    assert "--semi-supervised" in msg and "semi_supervised=True" in msg

    kept = read_split(tmp_path, "train", allow_missing_masks=True)
    assert [t.name for t in kept] == [t.name for t in train]
    assert [t.mask_path for t in kept] == [None, None] + [t.mask_path for t in train[2:]]


def test_allowing_missing_masks_still_refuses_other_bad_files(tmp_path, png, mask_png):
    expected = _bad_tree(tmp_path, png, mask_png)
    with pytest.raises(DataError) as err:
        read_split(tmp_path, "train", allow_missing_masks=True)
    msg = str(err.value)
    assert "8 bad of 10 entries" in msg and "nomask.png" not in msg and "mask not found" not in msg
    assert all(name in msg for name in expected if name != "nomask.png")


def test_validation_and_test_splits_need_their_masks(tmp_path, fake_trees):
    fake_trees["simple"](tmp_path)
    for split in ("valid", "test"):
        read_split(tmp_path, split)[0].mask_path.unlink()
        with pytest.raises(DataError) as err:
            read_split(tmp_path, split)
        msg = str(err.value)
        assert "mask not found" in msg and "validation and test splits need every mask" in msg
        assert "training split only" in msg
