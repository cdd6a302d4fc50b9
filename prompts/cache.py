"""The versioned JSON knowledge cache: concept key -> descriptions + provenance.

File format (schema version 1)::

    {
      "schema_version": 1,
      "format": "tgcnet.knowledge-cache",
      "note": "optional free text",
      "entries": {
        "finding:pulmonary infection": {
          "descriptions": ["...", "..."],
          "provenance": {
            "generator": "gpt-4o-mini",              # model name, or who wrote them
            "endpoint": "https://api.openai.com",    # scheme://host[:port] only, or null
            "template_hash": "sha256:...",           # or null when no template was used
            "date": "2026-11-25T10:00:00+00:00"      # ISO 8601
          }
        }
      }
    }

Files are written atomically (tgcnet.io.save_json_atomic: a temporary file, then a rename), so a
reader or a killed writer never sees half a file. Entries are sorted by key for stable diffs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from tgcnet.io import save_json_atomic

__all__ = ["SCHEMA_VERSION", "FORMAT", "CacheError", "Provenance", "CacheEntry", "KnowledgeCache",
           "load_cache", "save_cache", "utc_now"]

SCHEMA_VERSION = 1
FORMAT = "tgcnet.knowledge-cache"


class CacheError(ValueError):
    """A cache file that cannot be used; the message names the file and the offending field."""


def utc_now() -> str:
    """ISO 8601 timestamp in UTC, to the second: provenance needs a date, not microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Provenance:
    """Where a concept's descriptions came from, so a reader can judge and reproduce them."""

    generator: str
    endpoint: str | None = None
    template_hash: str | None = None
    date: str = field(default_factory=utc_now)

    def to_dict(self) -> dict[str, Any]:
        return {"generator": self.generator, "endpoint": self.endpoint,
                "template_hash": self.template_hash, "date": self.date}


@dataclass(frozen=True)
class CacheEntry:
    """Descriptions of one concept and their provenance."""

    descriptions: tuple[str, ...]
    provenance: Provenance

    def to_dict(self) -> dict[str, Any]:
        return {"descriptions": list(self.descriptions), "provenance": self.provenance.to_dict()}


class KnowledgeCache:
    """In-memory cache; `save_cache`/`load_cache` move it to and from disk."""

    def __init__(self, entries: Mapping[str, CacheEntry] | None = None, note: str | None = None) -> None:
        self.entries: dict[str, CacheEntry] = dict(entries or {})
        self.note = note

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.entries))

    def __getitem__(self, key: str) -> CacheEntry:
        return self.entries[key]

    def get(self, key: str) -> CacheEntry | None:
        return self.entries.get(key)

    def set(self, key: str, descriptions: list[str] | tuple[str, ...], provenance: Provenance) -> None:
        """Add or replace one entry, validating it as `load_cache` would."""
        entry = CacheEntry(tuple(descriptions), provenance)
        _check_entry(entry.to_dict(), f"entries[{key!r}]", "<memory>")
        self.entries[key] = entry

    def is_current(self, key: str, template_hash: str | None) -> bool:
        """True when `key` is cached from the same template: a resumed run skips it."""
        entry = self.entries.get(key)
        return entry is not None and entry.provenance.template_hash == template_hash

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "format": FORMAT}
        if self.note:
            data["note"] = self.note
        data["entries"] = {k: self.entries[k].to_dict() for k in sorted(self.entries)}
        return data

    def __repr__(self) -> str:
        return f"KnowledgeCache({len(self)} concepts)"


# --------------------------------------------------------------------------- validation

def _fail(path: str | Path, where: str, problem: str) -> CacheError:
    return CacheError(f"knowledge cache {path}: {where}: {problem}")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_str(value: Any, where: str, path: str | Path, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip():
        want = "a non-empty string or null" if optional else "a non-empty string"
        raise _fail(path, where, f"expected {want}, got {_type_name(value)} {value!r:.60}")


def _check_entry(raw: Any, where: str, path: str | Path) -> None:
    if not isinstance(raw, dict):
        raise _fail(path, where, f"expected an object, got {_type_name(raw)}")
    missing = {"descriptions", "provenance"} - raw.keys()
    if missing:
        raise _fail(path, where, f"missing field(s) {sorted(missing)}")
    descs = raw["descriptions"]
    if not isinstance(descs, list):
        raise _fail(path, f"{where}.descriptions", f"expected a list of strings, got {_type_name(descs)}")
    for i, d in enumerate(descs):
        _check_str(d, f"{where}.descriptions[{i}]", path)
    prov = raw["provenance"]
    if not isinstance(prov, dict):
        raise _fail(path, f"{where}.provenance", f"expected an object, got {_type_name(prov)}")
    for name in ("generator", "endpoint", "template_hash", "date"):
        if name not in prov:
            raise _fail(path, f"{where}.provenance", f"missing field {name!r}")
    _check_str(prov["generator"], f"{where}.provenance.generator", path)
    _check_str(prov["endpoint"], f"{where}.provenance.endpoint", path, optional=True)
    _check_str(prov["template_hash"], f"{where}.provenance.template_hash", path, optional=True)
    _check_str(prov["date"], f"{where}.provenance.date", path)
    try:
        datetime.fromisoformat(prov["date"])
    except ValueError:
        raise _fail(path, f"{where}.provenance.date", f"not an ISO 8601 date: {prov['date']!r}") from None


def _check_header(data: Any, path: str | Path) -> None:
    if not isinstance(data, dict):
        raise _fail(path, "top level", f"expected a JSON object, got {_type_name(data)}")
    version = data.get("schema_version")
    if version is None:
        raise _fail(path, "schema_version", "missing: not a tgcnet knowledge cache")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _fail(path, "schema_version", f"expected a positive integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise _fail(path, "schema_version", f"version {version} is newer than this tgcnet reads "
                                            f"({SCHEMA_VERSION}); upgrade tgcnet to read it")
    if data.get("format", FORMAT) != FORMAT:
        raise _fail(path, "format", f"expected {FORMAT!r}, got {data.get('format')!r}")
    _check_str(data.get("note"), "note", path, optional=True)
    if not isinstance(data.get("entries"), dict):
        raise _fail(path, "entries", f"expected an object keyed by concept, got {_type_name(data.get('entries'))}")


def cache_from_dict(data: Any, path: str | Path = "<memory>") -> KnowledgeCache:
    """Validate parsed JSON and build the cache; every problem names `path` and the field."""
    _check_header(data, path)
    entries: dict[str, CacheEntry] = {}
    for key, raw in data["entries"].items():
        if ":" not in key:
            raise _fail(path, f"entries[{key!r}]", "concept key must be of the form 'kind:value'")
        _check_entry(raw, f"entries[{key!r}]", path)
        prov = raw["provenance"]
        entries[key] = CacheEntry(tuple(raw["descriptions"]), Provenance(
            generator=prov["generator"], endpoint=prov["endpoint"],
            template_hash=prov["template_hash"], date=prov["date"]))
    return KnowledgeCache(entries, note=data.get("note"))


def load_cache(path: str | Path) -> KnowledgeCache:
    """Read and validate a cache file; raises CacheError naming the file on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CacheError(f"knowledge cache {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CacheError(f"knowledge cache {path}: cannot be read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CacheError(f"knowledge cache {path}: corrupt file, not valid JSON ({exc})") from None
    return cache_from_dict(data, path)


# --------------------------------------------------------------------------- writing

def save_cache(cache: KnowledgeCache, path: str | Path) -> None:
    """Atomically write `cache` as JSON (sorted keys, UTF-8, one entry per block)."""
    save_json_atomic(cache.to_dict(), path)
