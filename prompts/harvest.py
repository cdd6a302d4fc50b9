"""Harvest the distinct captions of a file or a data directory, for `prompts generate --captions`.

Only the caption strings are wanted (to find the concepts they name), not the image and
mask each caption belongs to, so this stays independent of tgcnet.data (prompts must not
import the model side): a glob over the known layouts is enough. Tables are read by
:func:`tgcnet.io.read_table`, the reader of every Image/Description table.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from tgcnet.io import read_table

__all__ = ["harvest_captions", "caption_files", "DATA_DIR_PATTERNS"]

# Caption files of the layouts tgcnet reads: QaTa-mini, LViT, SGSeg, GuideDecoder.
DATA_DIR_PATTERNS: tuple[str, ...] = ("**/prompts.csv", "**/*_text.xlsx", "**/annotation.json", "**/prompt/*.csv")
_COLUMNS = ("description", "caption", "text", "prompt")


def _from_table(path: Path) -> list[str]:
    """The caption column of a CSV or Excel table; an empty file holds no captions."""
    if path.stat().st_size == 0:
        return []
    return read_table(path, expected=f"a caption column ({', '.join(_COLUMNS)})").first_column(_COLUMNS, "caption")


def _strings_under(node: Any, keys: frozenset[str]) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(v, str) and k.lower() in keys:
                yield v
            else:
                yield from _strings_under(v, keys)
    elif isinstance(node, list):
        for v in node:
            yield from _strings_under(v, keys)


def _from_json(path: Path) -> list[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return list(_strings_under(data, frozenset({"caption", "description", "text", "prompt"})))


def _from_text(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _from_file(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    reader = {".csv": _from_table, ".xlsx": _from_table, ".xls": _from_table, ".json": _from_json}.get(suffix, _from_text)
    return reader(path)


def caption_files(directory: Path) -> list[Path]:
    """Caption files under a data directory, sorted so runs are reproducible."""
    found = {p for pattern in DATA_DIR_PATTERNS for p in directory.glob(pattern) if p.is_file()}
    return sorted(found)


def harvest_captions(source: str | Path) -> list[str]:
    """Distinct non-empty captions, in first-seen order, from a CSV/XLSX/JSON/text file or a data directory."""
    source = Path(source)
    if source.is_dir():
        files = caption_files(source)
        if not files:
            raise FileNotFoundError(f"{source}: no caption files found (looked for {', '.join(DATA_DIR_PATTERNS)})")
    elif source.is_file():
        files = [source]
    else:
        raise FileNotFoundError(f"{source}: no such file or directory")
    seen: dict[str, None] = {}
    for f in files:
        for caption in _from_file(f):
            caption = caption.strip()
            if caption and not caption.startswith("#"):
                seen.setdefault(caption, None)
    return list(seen)
