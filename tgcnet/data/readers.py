"""Readers for the on-disk layouts that text-guided segmentation data sets come in.

Every reader turns one split into a list of :class:`Triple` (image, mask, caption) in the
order of the annotation file, so that index-based conventions (GuideDecoder's 80/20
train/valid cut) and data order on resume are reproducible.

Bad data is reported, not guessed: every problem found in a split is collected and raised
as one :class:`DataError` listing the offending files, so a user fixes a data set in one
pass instead of one crash at a time. ``skip_bad=True`` turns that into a single warning and
drops the offending triples. ``allow_missing_masks=True`` (semi-supervised training) keeps
an image whose mask file is missing, as a triple without a mask.
"""
from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


from tgcnet.captions import tidy_text
from tgcnet.io import DataError, read_table

from .dicom import DICOM_SUFFIXES
from .probe import MASK_SUFFIXES, probe_file

__all__ = ["Triple", "DataError", "LAYOUTS", "SPLITS", "IMAGE_SUFFIXES", "MASK_SUFFIXES", "detect_layout",
           "read_split", "format_problems"]

LAYOUTS: tuple[str, ...] = ("simple", "lvit", "guidedecoder", "sgseg")
SPLITS: tuple[str, ...] = ("train", "valid", "test")
#: Suffixes of the files an image folder is scanned for (images without a caption are reported).
IMAGE_SUFFIXES: tuple[str, ...] = MASK_SUFFIXES + DICOM_SUFFIXES
# GuideDecoder / LanGuideMedSeg keep the last 20% of train.csv as validation.
GUIDEDECODER_TRAIN_FRACTION = 0.8
MAX_LISTED = 20  # problems spelled out in an error message; the rest are counted
# Training reads the 'valid' split by default (tgcnet.engine.TrainConfig.val_split).
NO_VALID_ADVICE = "to train without validation, pass --val-split none (val_split=None in Python)"
SEMI_SUPERVISED_ADVICE = ("to train on the images without a mask as unlabelled (their captions still guide them), "
                          "pass --semi-supervised (semi_supervised=True)")
MASKS_NEEDED_ADVICE = ("validation and test splits need every mask, since the metrics compare against them; "
                       "semi-supervised training (--semi-supervised) applies to the training split only")


@dataclass(frozen=True)
class Triple:
    """One annotated example: an image, its binary mask and the caption describing it.

    ``mask_path`` is None for an image that trains without a mask (semi-supervised training:
    its mask file is missing, or a labelled split hid it).
    """

    name: str
    image_path: Path
    mask_path: Path | None
    caption: str


@dataclass
class _Row:
    """A triple as the annotation file describes it, before any check."""

    name: str
    image_path: Path
    mask_path: Path
    caption: str | None
    problem: str | None = None  # known before any file is opened (e.g. no annotation row)


def _canonical_split(split: str) -> str:
    s = split.lower()
    if s == "val":
        s = "valid"
    if s not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} (or 'val'), got {split!r}")
    return s


def _split_missing(split: str, message: str) -> str:
    """``message`` saying that a split is not there, with the way out when it is the validation split.

    Training asks for 'valid' by default and many releases ship only train and test: the
    user needs to know validation can be turned off, not only which file is missing.
    """
    return f"{message}; {NO_VALID_ADVICE}" if split == "valid" else message


# --------------------------------------------------------------------------- detection

def _first_existing(*paths: Path) -> Path | None:
    return next((p for p in paths if p.exists()), None)


_SIGNATURES: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "simple": ("{train,valid,val,test}/prompts.csv",
               lambda r: any((r / s / "prompts.csv").is_file() for s in ("train", "valid", "val", "test"))),
    "lvit": ("{Train,Val,Test}_Folder/",
             lambda r: any((r / f"{s}_Folder").is_dir() for s in ("Train", "Val", "Test"))),
    "guidedecoder": ("prompt/{train,test}.csv",
                     lambda r: any((r / "prompt" / f"{s}.csv").is_file() for s in ("train", "test"))),
    "sgseg": ("prompts/annotation.json", lambda r: (r / "prompts" / "annotation.json").is_file()),
}


def detect_layout(root: str | Path) -> str:
    """Name of the layout under ``root``; raises ValueError saying what was looked for."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} is not a directory")
    found = [name for name, (_, test) in _SIGNATURES.items() if test(root)]
    if len(found) == 1:
        return found[0]
    looked = "; ".join(f"{name}: {pattern}" for name, (pattern, _) in _SIGNATURES.items())
    if not found:
        raise ValueError(f"cannot detect the data layout of {root}: found none of {looked} "
                         f"(see tgcnet/data/readers.py; pass layout= explicitly if it is one of {LAYOUTS})")
    raise ValueError(f"{root} matches several layouts {found}; pass layout= to pick one")


# --------------------------------------------------------------------------- layouts

def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _read_table(path: Path) -> list[tuple[str, str]]:
    """(Image, Description) pairs of a CSV or Excel annotation file, in file order, whitespace tidied."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} not found")
    table = read_table(path, expected="columns Image and Description")
    return [(tidy_text(img), tidy_text(desc)) for img, desc in table.columns("Image", "Description")]


def _orphans(image_dir: Path, named: set[str], source: Path) -> list[_Row]:
    """Images on disk that no annotation row names: their caption is missing."""
    return [_Row(p.name, p, p, None, problem=f"caption missing: no row for this image in {source}")
            for p in _images_in(image_dir) if p.name not in named]


def _with_orphans(rows: list[_Row], image_dir: Path, source: Path) -> list[_Row]:
    return rows + _orphans(image_dir, {r.image_path.name for r in rows}, source)


def _find_mask(folder: Path, mask_name: str) -> Path:
    """``folder / mask_name``, or the same stem with a mask suffix (a .jpg or .dcm image, its mask in .png).

    Masks are saved losslessly while images are often JPEG or DICOM, so the image's
    suffix is a poor guess for the mask's. A mask found under no suffix stays the exact
    name, so the error reports the name that was expected.
    """
    exact = folder / mask_name
    if exact.exists():
        return exact
    stem = Path(mask_name).stem
    return _first_existing(*(folder / f"{stem}{s}" for s in MASK_SUFFIXES)) or exact


def _find_image(folder: Path, name: str) -> Path:
    """``folder / name``, or the same stem with another image suffix.

    GuideDecoder and SGSeg annotations name the mask (mask_x.png) and the image is found
    by dropping the prefix, so an image kept as x.dcm or x.jpg beside PNG masks is
    found by its stem. A missing image stays the exact name, for the error.
    """
    exact = folder / name
    if exact.exists():
        return exact
    stem = Path(name).stem
    return _first_existing(*(folder / f"{stem}{s}" for s in IMAGE_SUFFIXES)) or exact


def _simple(root: Path, split: str) -> list[_Row]:
    folder = root / split
    if split == "valid" and not folder.is_dir() and (root / "val").is_dir():
        folder = root / "val"
    table = folder / "prompts.csv"
    if not table.is_file():
        also = f" (nor {root / 'val' / 'prompts.csv'})" if split == "valid" else ""
        raise FileNotFoundError(_split_missing(
            split, f"simple data set {root} has no {split!r} split: {table} not found{also}"))
    rows = [_Row(n, folder / "images" / n, _find_mask(folder / "masks", f"mask_{n}"), c)
            for n, c in _read_table(table)]
    return _with_orphans(rows, folder / "images", table)


def _lvit(root: Path, split: str) -> list[_Row]:
    prefix = {"train": "Train", "valid": "Val", "test": "Test"}[split]
    folder = root / f"{prefix}_Folder"
    # LViT's code reads Train_Folder/Train_text.xlsx; some copies keep the xlsx beside the folders.
    table = _first_existing(folder / f"{prefix}_text.xlsx", root / f"{prefix}_text.xlsx")
    if table is None:
        raise FileNotFoundError(_split_missing(
            split, f"LViT data set {root} has no {split!r} split: looked for {folder / f'{prefix}_text.xlsx'} "
                   f"and {root / f'{prefix}_text.xlsx'}"))
    rows = [_Row(n, folder / "img" / n, _find_mask(folder / "labelcol", n), c) for n, c in _read_table(table)]
    return _with_orphans(rows, folder / "img", table)


def _strip_mask_prefix(mask_name: str) -> str:
    return mask_name[len("mask_"):] if mask_name.startswith("mask_") else mask_name


def _guidedecoder(root: Path, split: str) -> list[_Row]:
    table = root / "prompt" / ("test.csv" if split == "test" else "train.csv")
    folder = root / ("Test" if split == "test" else "Train")
    entries = _read_table(table)
    if split != "test":
        # LanGuideMedSeg: train = rows[:int(0.8 n)], valid = rows[int(0.8 n):]
        cut = int(GUIDEDECODER_TRAIN_FRACTION * len(entries))
        entries = entries[:cut] if split == "train" else entries[cut:]
    rows = []
    for mask_name, caption in entries:
        image = _find_image(folder / "Images", _strip_mask_prefix(mask_name))
        rows.append(_Row(image.name, image, _find_mask(folder / "GTs", mask_name), caption))
    if split == "test":
        return _with_orphans(rows, folder / "Images", table)
    # Orphans belong to neither part of the cut: check them against the whole train.csv.
    named = {_find_image(folder / "Images", _strip_mask_prefix(m)).name for m, _ in _read_table(table)}
    return rows + _orphans(folder / "Images", named, table)


def _load_json(path: Path) -> dict:
    """SGSeg's annotation.json: an object of split name -> list of entries, or a DataError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = f"not valid JSON ({type(exc).__name__}: {exc})"
        raise DataError(f"{path}: {reason}; re-export it, or restore it from the original data set",
                        [(path, reason)]) from exc
    if not isinstance(data, dict):
        reason = f"holds a JSON {type(data).__name__}, not an object of split name -> entries"
        raise DataError(f"{path}: {reason}", [(path, reason)])
    return data


def _sgseg(root: Path, split: str) -> list[_Row]:
    table = root / "prompts" / "annotation.json"
    if not table.is_file():
        raise FileNotFoundError(f"SGSeg annotation file {table} not found")
    data = _load_json(table)
    key = split if split in data else ("val" if split == "valid" and "val" in data else None)
    if key is None:
        raise DataError(_split_missing(split, f"{table}: no {split!r} entry; found keys {sorted(data)}"),
                        [(table, f"no {split!r} entry")])
    folder = root / "images" / split
    if not folder.is_dir() and split == "valid" and (root / "images" / "val").is_dir():
        folder = root / "images" / "val"
    rows = []
    for i, item in enumerate(data[key]):
        if not isinstance(item, dict) or "image_path" not in item:
            rows.append(_Row(f"<entry {i}>", table, table, None, problem=f"{key}[{i}] has no image_path"))
            continue
        mask_name = Path(str(item["image_path"])).name
        image = _find_image(folder / "images", _strip_mask_prefix(mask_name))
        rows.append(_Row(image.name, image, _find_mask(folder / "masks", mask_name),
                         tidy_text(item.get("caption"))))
    return _with_orphans(rows, folder / "images", table)


_READERS: dict[str, Callable[[Path, str], list[_Row]]] = {
    "simple": _simple, "lvit": _lvit, "guidedecoder": _guidedecoder, "sgseg": _sgseg,
}


# --------------------------------------------------------------------------- checks

def _mask_missing(row: _Row) -> bool:
    return row.problem is None and not row.mask_path.is_file()


def _problems(row: _Row, mask_optional: bool = False) -> list[str]:
    if row.problem:
        return [row.problem]
    found = []
    if not row.caption:
        found.append("caption missing or empty")
    image_size, err = probe_file(row.image_path, "image", listed=True)
    if err:
        found.append(err)
    if mask_optional and _mask_missing(row):
        return found
    mask_size, err = probe_file(row.mask_path, "mask", listed=False)
    if err:
        found.append(err)
    if image_size and mask_size and image_size != mask_size:
        found.append(f"size mismatch: image {image_size[0]}x{image_size[1]} but mask "
                     f"{mask_size[0]}x{mask_size[1]} ({row.mask_path})")
    return found


def format_problems(problems: list[tuple[Path, str]], limit: int = MAX_LISTED) -> str:
    lines = [f"  {path}: {reason}" for path, reason in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def _missing_mask_advice(split: str) -> str:
    """The way out of missing masks: training may go on without them, evaluation may not."""
    return SEMI_SUPERVISED_ADVICE if split == "train" else MASKS_NEEDED_ADVICE


def read_split(root: str | Path, split: str, layout: str | None = None, skip_bad: bool = False,
               allow_missing_masks: bool = False) -> list[Triple]:
    """Read and check one split of a data set.

    Args:
        root: the data set folder.
        split: "train", "valid" (or "val") or "test".
        layout: one of ``LAYOUTS``; detected from the folder's contents when None.
        skip_bad: drop bad triples with one warning instead of raising DataError.
        allow_missing_masks: keep an image whose mask file is missing, with ``mask_path``
            None (semi-supervised training); a mask that is there but unreadable is still bad.
    """
    root = Path(root)
    split = _canonical_split(split)
    layout = detect_layout(root) if layout is None else layout
    if layout not in _READERS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    rows = _READERS[layout](root, split)
    where = f"{layout} data set {root}, split {split!r}"
    if not rows:
        raise DataError(f"{where}: no triples found")

    counts = Counter(r.name for r in rows)
    problems: list[tuple[Path, str]] = []
    bad: set[int] = set()
    for i, row in enumerate(rows):
        reasons = _problems(row, mask_optional=allow_missing_masks)
        if counts[row.name] > 1:
            reasons.append(f"duplicate name {row.name!r} ({counts[row.name]} entries in this split)")
        if reasons:
            bad.add(i)
            problems.append((row.image_path, "; ".join(reasons)))

    if problems:
        message = (f"{where}: {len(problems)} bad of {len(rows)} entries\n{format_problems(problems)}")
        if not skip_bad:
            advice = "\nFix or remove them, or pass skip_bad=True (--skip-bad) to drop them."
            if any(_mask_missing(rows[i]) for i in bad):
                advice += f"\nMasks are missing: {_missing_mask_advice(split)}."
            raise DataError(message + advice, problems)
        warnings.warn(f"skipped {len(problems)} bad entries: {message}", stacklevel=2)
    good = [Triple(r.name, r.image_path, None if allow_missing_masks and _mask_missing(r) else r.mask_path,
                   r.caption or "") for i, r in enumerate(rows) if i not in bad]
    if not good:
        raise DataError(f"{where}: no usable triples left after skipping {len(problems)} bad ones", problems)
    return good

