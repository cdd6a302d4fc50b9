"""The versioned JSON cache: round trip, validation errors naming file and field, atomic writes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tgcnet.prompts import SCHEMA_VERSION, CacheError, KnowledgeCache, Provenance, load_cache, save_cache
import tgcnet.io
from tgcnet.prompts.prompt_templates import load_templates, render_messages


def _cache() -> KnowledgeCache:
    c = KnowledgeCache(note="test")
    prov = Provenance(generator="gpt-x", endpoint="http://127.0.0.1:8000", template_hash="sha256:ab",
                      date="2026-01-02T03:04:05+00:00")
    c.set("zone:lower left lung", ["Lower zone.", "Near the diaphragm."], prov)
    c.set("finding:consolidation", ["Dense."], prov)
    return c


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "c.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_round_trip_is_exact(tmp_path):
    path = tmp_path / "sub" / "c.json"
    save_cache(_cache(), path)
    loaded = load_cache(path)
    assert loaded.to_dict() == _cache().to_dict()
    raw = json.loads(path.read_text())
    assert raw["schema_version"] == SCHEMA_VERSION == 1
    assert list(raw["entries"]) == ["finding:consolidation", "zone:lower left lung"]  # sorted, stable diffs
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in path.parent.iterdir()] == ["c.json"]


@pytest.mark.parametrize("data, match", [
    ("{not json", r"corrupt file, not valid JSON"),
    ([], r"top level: expected a JSON object"),
    ({"entries": {}}, r"schema_version: missing"),
    ({"schema_version": "1", "entries": {}}, r"schema_version: expected a positive integer"),
    ({"schema_version": SCHEMA_VERSION + 1, "entries": {}}, r"version 2 is newer than this tgcnet reads \(1\)"),
    ({"schema_version": 1, "entries": []}, r"entries: expected an object keyed by concept, got list"),
    ({"schema_version": 1, "format": "other", "entries": {}}, r"format: expected"),
    ({"schema_version": 1, "entries": {"nokind": {}}}, r"entries\['nokind'\]: concept key must be"),
    ({"schema_version": 1, "entries": {"a:b": {"descriptions": "x", "provenance": {}}}},
     r"entries\['a:b'\]\.descriptions: expected a list of strings, got str"),
    ({"schema_version": 1, "entries": {"a:b": {"descriptions": ["ok", 3], "provenance": {}}}},
     r"entries\['a:b'\]\.descriptions\[1\]: expected a non-empty string, got int"),
    ({"schema_version": 1, "entries": {"a:b": {"descriptions": ["ok"], "provenance": {"generator": "g"}}}},
     r"entries\['a:b'\]\.provenance: missing field 'endpoint'"),
    ({"schema_version": 1, "entries": {"a:b": {"descriptions": ["ok"], "provenance": {
        "generator": "g", "endpoint": None, "template_hash": None, "date": "yesterday"}}}},
     r"provenance\.date: not an ISO 8601 date"),
    ({"schema_version": 1, "entries": {"a:b": {"descriptions": ["ok"], "provenance": {
        "generator": "", "endpoint": None, "template_hash": None, "date": "2026-01-01"}}}},
     r"provenance\.generator: expected a non-empty string"),
])
def test_invalid_files_raise_one_clear_error_naming_the_file(tmp_path, data, match):
    path = _write(tmp_path, data)
    with pytest.raises(CacheError, match=match) as info:
        load_cache(path)
    assert str(path) in str(info.value)
    err = info.value  # one error, not a chained JSONDecodeError/KeyError traceback
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def test_missing_file(tmp_path):
    with pytest.raises(CacheError, match="file not found"):
        load_cache(tmp_path / "nope.json")


def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    save_cache(_cache(), path)
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(tgcnet.io.os, "replace", boom)  # the writer save_cache uses
    bigger = _cache()
    bigger.set("count:two areas", ["Two."], Provenance("g"))
    with pytest.raises(OSError, match="disk full"):
        save_cache(bigger, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.json"]


def test_set_validates_like_load():
    c = KnowledgeCache()
    with pytest.raises(CacheError, match="descriptions"):
        c.set("a:b", ["", "x"], Provenance("g"))
    with pytest.raises(CacheError, match="date"):
        c.set("a:b", ["x"], Provenance("g", date="soon"))


def test_is_current_compares_template_hash():
    c = _cache()
    assert c.is_current("finding:consolidation", "sha256:ab")
    assert not c.is_current("finding:consolidation", "sha256:other")
    assert not c.is_current("finding:other", "sha256:ab")


def test_template_hash_is_sha256_of_the_template_text():
    import hashlib

    t = load_templates()
    assert t.hash == "sha256:" + hashlib.sha256(t.text.encode()).hexdigest()
    assert t.system in t.text and t.user in t.text
    msgs = render_messages(t, "zone:lower left lung", 3)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "Concept: lower left lung" in msgs[1]["content"] and "exactly 3" in msgs[1]["content"]
    assert "$" not in msgs[1]["content"]
    other = type(t)(system=t.system, user=t.user + " ")
    assert other.hash != t.hash
