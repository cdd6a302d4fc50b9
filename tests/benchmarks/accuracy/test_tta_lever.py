"""benchmarks.accuracy.tta_lever: flip TTA scored on valid and test of trained runs, decided per group of seeds by
the one rule, and its report rendered from the scores alone."""
from __future__ import annotations

import json

import pytest

from benchmarks.accuracy import tta_lever
from helpers import TINY_TRAIN_ARGS
from tgcnet.cli import main as tgcnet_main
from tgcnet.data import sample_root
from tgcnet.engine import evaluate


def _run(valid: tuple[float, float], test: tuple[float, float] = (0.5, 0.5)) -> dict:
    return {"valid": {"none": {"dice": valid[0], "pooled_dice": valid[0]},
                      "flip": {"dice": valid[1], "pooled_dice": valid[1]}},
            "test": {"none": {"dice": test[0], "pooled_dice": test[0]},
                     "flip": {"dice": test[1], "pooled_dice": test[1]}},
            "commit": "abc1234", "date": "2026-01-01 00:00", "machine": "x86_64"}


def test_flip_counts_only_where_its_range_clears_the_plain_one():
    steady = {"s0": _run((0.70, 0.72)), "s1": _run((0.71, 0.73)), "s2": _run((0.70, 0.72))}
    assert tta_lever.decide(steady)["verdict"] == "better"
    noisy = {"s0": _run((0.70, 0.72)), "s1": _run((0.75, 0.77)), "s2": _run((0.65, 0.67))}   # seeds differ by 5
    assert tta_lever.decide(noisy)["verdict"] == "within the spread"
    assert tta_lever.decide({"s0": _run((0.70, 0.80))})["verdict"] == "within the spread"   # one run: no spread
    worse = {"s0": _run((0.72, 0.70)), "s1": _run((0.73, 0.71))}
    assert tta_lever.decide(worse)["verdict"] == "worse"


def test_the_report_renders_a_row_per_run_and_a_verdict_per_group():
    runs = {"a": _run((0.70, 0.72), (0.60, 0.61)), "a@s1": _run((0.71, 0.73), (0.62, 0.64)),
            "b": _run((0.70, 0.69)), "b@s1": _run((0.71, 0.70))}
    md = tta_lever.to_markdown({"data": "qata-mini", "runs": runs})
    assert md.startswith("# Flip test-time augmentation on qata-mini\n\nWritten by "
                         "`python -m benchmarks.accuracy.tta_lever`.")
    assert ("| a@s1 | 0.7100 | 0.7300 | +2.00 | 0.6200 | 0.6400 | 0.6200 | 0.6400 | "
            "abc1234, 2026-01-01 00:00, x86_64 |") in md
    assert ("- `a` (2 runs): valid per-image Dice gain +2.00 points (sd over runs 0.00); valid Dice over the runs "
            "0.7000-0.7100 plain, 0.7200-0.7300 with flip TTA; test gain per-image +1.50, pooled +1.50 points. "
            "Verdict: better.") in md
    assert "- `b` (2 runs): valid per-image Dice gain -1.00 points" in md and md.count("Verdict: ") == 2


def test_scores_trained_runs_and_writes_the_report(tmp_path):
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"tgcnet@s{seed}"
        assert tgcnet_main(["train", "--data", str(sample_root()), "--out", str(run), "--epochs", "1",
                            "--seed", str(seed), *TINY_TRAIN_ARGS]) == 0
        runs.append(str(run))
    out = tmp_path / "out"
    assert tta_lever.main([*runs, "--data", str(sample_root()), "--out", str(out), "--threads", "0"]) == 0
    report = json.loads((out / "tta_lever.json").read_text())
    assert list(report) == ["data", "runs"] and list(report["runs"]) == ["tgcnet@s0", "tgcnet@s1"]
    scores = report["runs"]["tgcnet@s0"]
    assert set(scores) == {"valid", "test", "commit", "date", "machine"}
    for tta in ("none", "flip"):   # each score is evaluate's, with and without flip TTA
        plain = evaluate(runs[0], sample_root(), "test", device="cpu", progress=False, tta=tta)
        assert scores["test"][tta] == {"dice": plain["dice"], "pooled_dice": plain["pooled_dice"]}
    md = (out / "tta_lever.md").read_text()
    assert md == tta_lever.to_markdown(report) and "- `tgcnet` (2 runs)" in md

    # --merge adds runs to the report already there; a run scored again replaces its row
    again = str(tmp_path / "tgcnet@s1")
    assert tta_lever.main([again, "--data", str(sample_root()), "--out", str(out), "--threads", "0", "--merge"]) == 0
    merged = json.loads((out / "tta_lever.json").read_text())
    assert list(merged["runs"]) == ["tgcnet@s0", "tgcnet@s1"] and merged["runs"]["tgcnet@s0"] == scores
    assert tta_lever.main([again, "--data", str(sample_root()), "--out", str(out), "--threads", "0"]) == 0
    assert list(json.loads((out / "tta_lever.json").read_text())["runs"]) == ["tgcnet@s1"]
    assert tta_lever.main([str(tmp_path / "nothing"), "--out", str(out)]) == 2


def test_report_renders_a_json_again_and_refuses_what_is_not_one(tmp_path):
    source = tmp_path / "in" / "tta_lever.json"
    source.parent.mkdir()
    source.write_text(json.dumps({"data": "qata-mini", "runs": {"a": _run((0.7, 0.71))}}, indent=2) + "\n")
    assert tta_lever.main(["--report", str(source), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "tta_lever.json").read_bytes() == source.read_bytes()
    assert "| a | 0.7000 | 0.7100 |" in (tmp_path / "out" / "tta_lever.md").read_text()
    source.write_text(json.dumps({"meta": {}}))
    with pytest.raises(SystemExit, match="has no 'runs'"):
        tta_lever.main(["--report", str(source), "--out", str(tmp_path / "out")])
