"""benchmarks.accuracy.plots: both figures drawn from reports, what they draw, and the report linking them."""
from __future__ import annotations

import dataclasses

import pytest

from benchmarks.accuracy import plots
from benchmarks.accuracy.qata_report import write_report
from benchmarks.accuracy.qata_runs import RunSpec


def test_plots_draws_both_figures_and_the_report_links_them(result, report, tmp_path):
    pytest.importorskip("matplotlib")
    curve = [[60.0, 0.3], [120.0, 0.5], [180.0, 0.55]]
    rows = [result("tgcnet@n50", 0.50, 50, curve=curve), result("tgcnet@n50@s1", 0.60, 50, 1, curve),
            result("tgcnet@n50@s2", 0.55, 50, 2), result("tgcnet", 0.70, 600, curve=curve),
            result("notext", 0.65, 600), result("unet@n50", 0.40, 50), result("unet", 0.68, 600),
            result("clipseg", 0.45, 600, curve=curve), result("base", 0.9, 600, curve=curve, minutes=10),
            result("tgcnet@m10", 0.66, 600, curve=curve, minutes=10),
            result("tgcnet_deepsup@m10", 0.67, 600, curve=curve, minutes=10)]
    out = tmp_path / "out"
    write_report(report({r["run"]: r for r in rows}), out, quiet=True)
    assert "## Plots" not in (out / "qata_mini.md").read_text()   # nothing to link yet
    assert plots.main([str(out / "qata_mini.json"), "--out", str(out)]) == 0
    for name in ("qata_mini_data_efficiency.png", "qata_mini_val_curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in (out / "qata_mini.md").read_text()
    # no scarce-mask run: no scarce-mask figure, no link
    assert not (out / "qata_mini_scarce_masks.png").exists()
    assert "scarce_masks" not in (out / "qata_mini.md").read_text()
    # what the data-efficiency figure draws: mean and sd over the three seeds, the ablation row and the
    # whole-split run at a budget no subset run has left out, and a report given twice counted once
    points = plots.efficiency_points(plots.load_rows([out / "qata_mini.json"] * 2))
    assert set(points) == {("tgcnet", 30.0), ("notext", 30.0), ("unet", 30.0), ("clipseg", 30.0)}
    at50, at600 = points[("tgcnet", 30.0)]
    assert (at50["n"], at50["seeds"], at600["n"], at600["dice"]["sd"]) == (50, [0, 1, 2], 600, None)
    assert at50["dice"]["mean"] == pytest.approx(0.55) and at50["dice"]["sd"] == pytest.approx(0.05)
    assert at50["pooled_dice"]["mean"] == pytest.approx(0.60)
    curves = plots.val_curve_rows(plots.load_rows([out / "qata_mini.json"]))   # whole-split main models only
    assert sorted(r["key"] for r in curves) == ["clipseg", "tgcnet", "tgcnet@m10"]


def test_unknown_kinds_are_refused(tmp_path, capsys):
    assert plots.main([str(tmp_path / "qata_mini.json"), "--out", str(tmp_path), "--kinds", "tgcnet,nothing"]) == 2
    assert "unknown run kind(s) ['nothing']" in capsys.readouterr().err


def test_the_scarce_mask_figure_is_drawn_when_its_runs_exist(result, report, tmp_path):
    pytest.importorskip("matplotlib")
    val = {"tgcnet@m10": [0.72, 0.73, 0.74], "semi25_alone@m10": [0.60, 0.62, 0.64], "semi25@m10": [0.66, 0.68],
           "semi25_language@m10": [0.61], "semi50_alone@m10": [0.65, 0.66], "semi50@m10": [0.70, 0.70],
           "semi25@m4": [0.5], "semi25@n50@m10": [0.3], "tgcnet": [0.9]}   # another budget, a subset, 30 min
    rows = [result(key, v + 0.02, seed=seed, minutes=RunSpec.from_key(key).budget, val=v)
            for key, seed, v in ((dataclasses.replace(RunSpec.from_key(stem), seed=seed).key, seed, v)
                                 for stem, values in val.items() for seed, v in enumerate(values))]
    out = tmp_path / "out"
    write_report(report({r["run"]: r for r in rows}), out, quiet=True)
    assert plots.main([str(out / "qata_mini.json"), "--out", str(out)]) == 0
    assert (out / "qata_mini_scarce_masks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](qata_mini_scarce_masks.png)" in (out / "qata_mini.md").read_text()
    # what it draws: the 10-minute whole-split results (the budget with the most), (c) at 100%
    points = plots.scarce_points(plots.load_rows([out / "qata_mini.json"]))
    assert points["budget_minutes"] == 10.0 and list(points["series"]) == ["alone", "both", "language", "full"]
    alone = points["series"]["alone"]
    assert [(p["fraction"], p["seeds"]) for p in alone] == [(0.25, [0, 1, 2]), (0.5, [0, 1])]
    assert alone[0]["dice"]["mean"] == pytest.approx(0.64) and alone[0]["dice"]["sd"] == pytest.approx(0.02)
    (full,) = points["series"]["full"]
    assert (full["fraction"], full["seeds"]) == (1.0, [0, 1, 2]) and full["dice"]["mean"] == pytest.approx(0.75)
    tgcnet_only = [r for r in plots.load_rows([out / "qata_mini.json"]) if r["kind"] == "tgcnet"]
    assert plots.scarce_points(tgcnet_only) is None and plots.plot_scarce_masks(tgcnet_only, tmp_path / "x.png") is None
