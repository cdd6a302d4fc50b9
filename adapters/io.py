"""Atomic safetensors and JSON writes: a crash mid-save never leaves a truncated file."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file


def _atomic_replace(path: Path, write: Any) -> None:
    """Write through ``write(tmp_path)`` to a temp file beside ``path``, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_safetensors_atomic(tensors: Mapping[str, torch.Tensor], path: str | Path,
                            metadata: Mapping[str, str] | None = None) -> None:
    """Save tensors (made contiguous, detached, on CPU) as safetensors, atomically."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic_replace(Path(path), lambda tmp: save_file(clean, tmp, metadata=dict(metadata or {})))


def save_json_atomic(data: Any, path: str | Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")

    _atomic_replace(Path(path), write)


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


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file with a clear error when it is missing or not safetensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc
