"""Files in and out, in one place and without torch: atomic writes, JSON, safetensors, annotation tables.

Why one module: every file tgcnet writes (model and adapter weights, configs, checkpoints'
state, knowledge caches, logs) must be all-or-nothing, since a run killed mid-save must
never leave a truncated file that the next run trusts; and every table a user hands in
(a data set's Image/Description file, the captions of a folder to predict, captions to
generate knowledge for) must fail with the file and the column named. Importing this
module loads neither torch nor pandas, so the knowledge tooling (``tgcnet.prompts``) can
use it; safetensors and pandas are imported by the functions that need them.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

if TYPE_CHECKING:
    import torch

__all__ = [
    "DataError", "Table", "atomic_write", "atomic_write_text", "save_json_atomic", "load_json",
    "save_safetensors_atomic", "load_safetensors", "read_table",
]


# --------------------------------------------------------------------------- writing

def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Write ``path`` all or nothing: ``write(tmp)`` fills a temporary file beside it, then a rename.

    The temporary file is synced before the rename, so after a crash ``path`` holds either
    the old content or the new, never a part. An existing file keeps its permissions; a
    new one gets the usual 0o644 (temporary files are created 0o600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_json_atomic(data: Any, path: str | Path) -> Path:
    """Write ``data`` as indented UTF-8 JSON, keys in insertion order, atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def save_safetensors_atomic(tensors: Mapping[str, "torch.Tensor"], path: str | Path,
                            metadata: Mapping[str, str] | None = None) -> Path:
    """Save tensors (detached, on CPU, contiguous) as safetensors, atomically."""
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(clean, tmp, metadata=dict(metadata or {})))


# --------------------------------------------------------------------------- reading

def load_json(path: str | Path, what: str) -> Any:
    """Read a JSON file; a missing file is a FileNotFoundError saying which ``what`` was expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def load_safetensors(path: str | Path) -> dict[str, "torch.Tensor"]:
    """Load a safetensors file with a clear error when it is missing or not safetensors."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc


class DataError(ValueError):
    """A data file has bad entries; ``problems`` holds ``(path, reason)`` for each of them."""

    def __init__(self, message: str, problems: list[tuple[Path, str]] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


EXCEL_SUFFIXES: tuple[str, ...] = (".xlsx", ".xls")


@dataclass(frozen=True)
class Table:
    """A CSV or Excel table as text: stripped header names and one list of cells per row ("" when empty)."""

    path: Path
    header: list[str]
    rows: list[list[str]]

    def columns(self, *names: str) -> list[tuple[str, ...]]:
        """The cells of the columns named exactly ``names``, one tuple per row, in file order.

        A DataError names the file, every missing column and the columns it has.
        """
        missing = [n for n in names if n not in self.header]
        if missing:
            reason = f"missing column(s) {missing}"
            raise DataError(f"{self.path}: {reason}; found {self.header}", [(self.path, reason)])
        index = [self.header.index(n) for n in names]
        return [tuple(row[i] for i in index) for row in self.rows]

    def first_column(self, names: Sequence[str], what: str) -> list[str]:
        """The cells of the first column whose name is one of ``names`` (any case), in file order."""
        lowered = [h.lower() for h in self.header]
        for name in names:
            if name.lower() in lowered:
                i = lowered.index(name.lower())
                return [row[i] for row in self.rows]
        reason = f"no {what} column"
        raise DataError(f"{self.path}: {reason}; expected one of {list(names)} (case-insensitive), "
                        f"found {self.header}", [(self.path, reason)])


def _table_error(path: Path, reason: str, expected: str) -> DataError:
    return DataError(f"{path}: {reason}; it must hold a header row with {expected}, then one row per entry "
                     "(re-export it, or restore it from the original data set)", [(path, reason)])


def read_table(path: str | Path, expected: str = "a header row") -> Table:
    """Read a CSV, or an Excel workbook by its suffix (``.xlsx``/``.xls``), as text cells.

    ``expected`` describes the header the caller needs ("columns Image and Description"),
    for the message when the file holds none. A missing file is a FileNotFoundError; an
    empty or unparsable one a DataError naming the file: pandas' own messages ("No columns
    to parse from file", BadZipFile) name neither the file nor the fix.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table {path} not found")
    excel = path.suffix.lower() in EXCEL_SUFFIXES
    if path.stat().st_size == 0:
        raise _table_error(path, "empty file (0 bytes)", expected)
    try:
        frame = (pd.read_excel(path, dtype=str) if excel
                 else pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig"))
    except pd.errors.EmptyDataError:
        raise _table_error(path, "no header row (the file holds only blank lines)", expected) from None
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, pd.errors.ParserError) as exc:
        kind = "Excel workbook" if excel else "CSV file"
        # pandas' advice for content it cannot place ("specify an engine") does not apply to a damaged file
        detail = ("its content is in no Excel format" if "format cannot be determined" in str(exc)
                  else f"{type(exc).__name__}: {exc}")
        raise _table_error(path, f"not a readable {kind} ({detail})", expected) from exc
    frame = frame.fillna("")
    return Table(path, [str(c).strip() for c in frame.columns],
                 [[str(cell) for cell in row] for row in frame.itertuples(index=False, name=None)])
