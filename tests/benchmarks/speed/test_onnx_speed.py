"""benchmarks.speed.onnx_speed: a difference between the engines counts only beyond the run-to-run spread."""
from __future__ import annotations

from benchmarks.speed.onnx_speed import spread, verdict


def test_spread_reads_quartiles_and_extremes():
    row = spread([1.0, 2.0, 3.0, 4.0, 5.0])
    assert row == {"median_s": 3.0, "q1_s": 2.0, "q3_s": 4.0, "min_s": 1.0, "max_s": 5.0, "rounds": 5}


def test_the_engines_differ_only_where_their_interquartile_ranges_are_apart():
    torch_row, fast = spread([1.0, 1.1, 1.2, 1.3, 1.4]), spread([0.5, 0.6, 0.7, 0.8, 0.9])
    assert verdict(torch_row, fast) == ("onnxruntime faster, beyond the run-to-run spread (interquartile ranges "
                                        "apart; min-max ranges apart as well)")
    near = spread([0.9, 1.0, 1.05, 1.15, 1.5])
    assert verdict(torch_row, near) == "within the run-to-run spread (the interquartile ranges overlap)"
    slow = spread([1.25, 1.35, 1.4, 1.45, 2.0])
    assert verdict(torch_row, slow).startswith("PyTorch faster") and verdict(torch_row, slow).endswith("overlapping)")
