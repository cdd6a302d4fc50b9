"""Builders of tiny fake data sets in every supported layout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image


def write_png(path: Path, size: tuple[int, int] = (8, 8), value: int | None = None, mode: str = "L",
              seed: int = 0) -> Path:
    """A small image; random content unless ``value`` is given. ``size`` is (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    shape = (h, w) if mode == "L" else (h, w, 3)
    if value is None:
        arr = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    else:
        arr = np.full(shape, value, np.uint8)
    Image.fromarray(arr, mode).save(path)
    return path


def write_mask(path: Path, size: tuple[int, int] = (8, 8), left_half: bool = True) -> Path:
    """0/255 mask with foreground in the left (or right) half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    arr = np.zeros((h, w), np.uint8)
    arr[:, : w // 2] = 255
    if not left_half:
        arr = arr[:, ::-1].copy()
    Image.fromarray(arr, "L").save(path)
    return path


def captions(n: int, prefix: str) -> list[str]:
    return [f"{prefix} infection {i}, lower left lung." for i in range(n)]


SIZES = {"train": 5, "valid": 3, "test": 4}


def make_simple(root: Path, sizes: dict[str, int] = SIZES) -> dict[str, list[tuple[str, str]]]:
    expected = {}
    for split, n in sizes.items():
        names = [f"{split}_{i}.png" for i in range(n)]
        caps = captions(n, split)
        for name in names:
            write_png(root / split / "images" / name)
            write_mask(root / split / "masks" / f"mask_{name}")
        pd.DataFrame({"Image": names, "Description": caps}).to_csv(root / split / "prompts.csv", index=False)
        expected[split] = list(zip(names, caps))
    return expected


def make_lvit(root: Path, xlsx_inside: bool = True) -> dict[str, list[tuple[str, str]]]:
    expected = {}
    for split, prefix in (("train", "Train"), ("valid", "Val"), ("test", "Test")):
        n = SIZES[split]
        folder = root / f"{prefix}_Folder"
        names = [f"{prefix.lower()}_{i}.png" for i in range(n)]
        caps = captions(n, prefix)
        for name in names:
            write_png(folder / "img" / name)
            write_mask(folder / "labelcol" / name)
        table = (folder if xlsx_inside else root) / f"{prefix}_text.xlsx"
        table.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"Image": names, "Description": caps}).to_excel(table, index=False)
        expected[split] = list(zip(names, caps))
    return expected


NOISY = "  Bilateral pulmonary infection,  two infected areas, upper midlle left lung and  upper lower right lung. "
CLEANED = "Bilateral pulmonary infection, two infected areas, upper midlle left lung and upper lower right lung."


def make_guidedecoder(root: Path, n_train: int = 10, n_test: int = 4) -> dict[str, list[tuple[str, str]]]:
    expected = {}
    for split, folder, n in (("train", "Train", n_train), ("test", "Test", n_test)):
        names = [f"{split}_{i}.png" for i in range(n)]
        caps = [NOISY.replace("two", str(i)) for i in range(n)]
        for name in names:
            write_png(root / folder / "Images" / name)
            write_mask(root / folder / "GTs" / f"mask_{name}")
        (root / "prompt").mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"Image": [f"mask_{x}" for x in names], "Description": caps}).to_csv(
            root / "prompt" / f"{split}.csv", index=False)
        expected[split] = list(zip(names, [CLEANED.replace("two", str(i)) for i in range(n)]))
    return expected


def make_sgseg(root: Path) -> dict[str, list[tuple[str, str]]]:
    expected, annotation = {}, {}
    for split, n in SIZES.items():
        names = [f"{split}_{i}.png" for i in range(n)]
        caps = captions(n, split)
        for name in names:
            write_png(root / "images" / split / "images" / name)
            write_mask(root / "images" / split / "masks" / f"mask_{name}")
        annotation[split] = [{"image_path": f"mask_{x}", "caption": c} for x, c in zip(names, caps)]
        expected[split] = list(zip(names, caps))
    (root / "prompts").mkdir(parents=True)
    (root / "prompts" / "annotation.json").write_text(json.dumps(annotation))
    return expected


@pytest.fixture
def fake_trees():
    """Builders by layout name: ``fake_trees[layout](root) -> {split: [(name, caption), ...]}``."""
    return {"simple": make_simple, "lvit": make_lvit, "guidedecoder": make_guidedecoder, "sgseg": make_sgseg}


@pytest.fixture
def png():
    return write_png


@pytest.fixture
def mask_png():
    return write_mask
