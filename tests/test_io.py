"""Atomic writes and the one table reader."""
from __future__ import annotations

import os
import re

import pandas as pd
import pytest
import torch

import tgcnet.io
from tgcnet.io import (DataError, atomic_write_text, load_json, load_safetensors, read_table, save_json_atomic,
                       save_safetensors_atomic)


def test_atomic_write_creates_parents_and_the_usual_mode(tmp_path):
    path = tmp_path / "a" / "b.txt"
    atomic_write_text(path, "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    path.chmod(0o600)
    atomic_write_text(path, "again")
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)  # an existing file keeps its mode


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    save_json_atomic({"a": 1}, path)

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(tgcnet.io.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_json_atomic({"a": 2}, path)
    assert load_json(path, "config") == {"a": 1}
    assert os.listdir(tmp_path) == ["c.json"]


def test_json_and_safetensors_round_trip_with_clear_errors(tmp_path):
    save_safetensors_atomic({"w": torch.arange(6.0).view(2, 3).t()}, tmp_path / "w.safetensors")  # non-contiguous
    assert torch.equal(load_safetensors(tmp_path / "w.safetensors")["w"], torch.arange(6.0).view(2, 3).t())
    with pytest.raises(FileNotFoundError, match="model config not found"):
        load_json(tmp_path / "none.json", "model config")
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_safetensors(tmp_path / "bad.safetensors")


def test_read_table_csv_and_xlsx_alike(tmp_path):
    frame = pd.DataFrame({" Image ": ["a.png", "b.png"], "Description": ["upper left lung.", None]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_excel(tmp_path / "t.xlsx", index=False)
    for name in ("t.csv", "t.xlsx"):
        table = read_table(tmp_path / name)
        assert table.header == ["Image", "Description"]
        assert table.columns("Image", "Description") == [("a.png", "upper left lung."), ("b.png", "")]
        assert table.first_column(("caption", "description"), "caption") == ["upper left lung.", ""]


def test_read_table_errors_name_the_file_and_the_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image,text\na.png,x\n")
    table = read_table(path)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: missing column\(s\) \['Image', 'Description'\]"):
        table.columns("Image", "Description")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: no caption column; expected one of"):
        table.first_column(("description", "caption"), "caption")
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty file.*columns Image and Description") as err:
        read_table(path, expected="columns Image and Description")
    assert err.value.problems[0][0] == path
    (tmp_path / "t.xlsx").write_bytes(bytes(range(256)))
    with pytest.raises(DataError, match="not a readable Excel workbook"):
        read_table(tmp_path / "t.xlsx")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_table(tmp_path / "nope.csv")
