"""A benchmark's two files, ``<name>.json`` (the figures) and ``<name>.md`` (their rendering), and
``--report``: the markdown rendered again from the JSON alone.

The JSON is the record; the markdown is always derived from it, so a report's wording can change
while its figures cannot, and every script re-renders the same way.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from tgcnet.io import atomic_write_text, save_json_atomic


def write_report(out: Path, name: str, result: dict[str, Any], markdown: str) -> None:
    """``out/<name>.json`` and ``out/<name>.md``, each written whole or not at all."""
    save_json_atomic(result, Path(out) / f"{name}.json")
    atomic_write_text(Path(out) / f"{name}.md", markdown)


def read_report(source: Path, flag: str, required: str) -> dict[str, Any]:
    """A report's JSON, or a SystemExit naming ``flag`` when it cannot be read or lacks ``required``
    (a file of another benchmark, or of an earlier layout of this one)."""
    try:
        result = json.loads(Path(source).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{flag}: cannot read {source}: {exc}") from exc
    if required not in result:
        raise SystemExit(f"{flag}: {source} has no {required!r}: it was written by another benchmark or an "
                         f"earlier layout of this one; measure it again without {flag}")
    return result


def rerender(source: Path, out: Path, name: str, required: str,
             to_markdown: Callable[[dict[str, Any]], str]) -> str:
    """``--report``: ``source``'s figures unchanged, its markdown rendered by today's code, both to ``out``."""
    result = read_report(source, "--report", required)
    markdown = to_markdown(result)
    write_report(out, name, result, markdown)
    return markdown
