"""benchmarks.report_files, and the committed results: every committed JSON still reads into today's schema
(its benchmark renders it), and ``--report`` re-renders without touching a figure."""
from __future__ import annotations

import json
from typing import Any, Callable

import pytest

from benchmarks import RESULTS, params
from benchmarks.accuracy import qata_report, threshold_lever, tta_lever
from benchmarks.report_files import read_report, rerender
from benchmarks.speed import onnx_speed, report as speed_report

#: each committed result: the key its JSON must have, and its benchmark's renderer
RENDERERS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "params": ("tgcnet", params.to_markdown),
    "speed": ("comparisons", speed_report.to_markdown),
    "onnx_speed": ("batches", onnx_speed.to_markdown),
    "qata_mini": ("results", lambda r: qata_report.to_markdown(r, qata_report.plots_in(RESULTS))),
    "tta_lever": ("runs", tta_lever.to_markdown),
    "threshold_lever": ("runs", threshold_lever.to_markdown),
}


def test_every_committed_result_has_a_renderer():
    assert {p.stem for p in RESULTS.glob("*.json")} == set(RENDERERS)
    assert {p.stem for p in RESULTS.glob("*.md")} == set(RENDERERS)


@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_every_committed_result_reads_into_the_current_schema(name):
    required, render = RENDERERS[name]
    md = render(read_report(RESULTS / f"{name}.json", "--report", required))
    assert md.startswith("# ") and "Written by `python -m benchmarks." in md


def test_rerender_keeps_the_figures_byte_for_byte(tmp_path):
    md = rerender(RESULTS / "params.json", tmp_path, "params", "tgcnet", params.to_markdown)
    assert (tmp_path / "params.json").read_bytes() == (RESULTS / "params.json").read_bytes()
    assert (tmp_path / "params.md").read_text() == md


def test_a_file_that_is_not_the_benchmark_s_is_refused(tmp_path):
    other = tmp_path / "speed.json"
    other.write_text(json.dumps({"runs": {}}))
    with pytest.raises(SystemExit, match="has no 'comparisons'"):
        read_report(other, "--report", "comparisons")
    with pytest.raises(SystemExit, match="cannot read"):
        read_report(tmp_path / "missing.json", "--report", "comparisons")
