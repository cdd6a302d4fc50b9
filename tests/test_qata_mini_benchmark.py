"""The qata-mini accuracy benchmark: its report is rebuilt exactly from its JSON, and a short run of
each kind of row (TGCNet with the noisy-caption scoring, the caption-free U-Net through the
engine's model_factory hook) ends with a report."""
import importlib
import json
import sys
from pathlib import Path

import pytest

from tgcnet.data.sample import sample_root

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        yield importlib.import_module("qata_mini")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_collect_rebuilds_the_committed_report(bench, tmp_path):
    bench.main(["--collect", str(RESULTS / "qata_mini.json"), "--out", str(tmp_path)])
    assert (tmp_path / "qata_mini.md").read_text() == (RESULTS / "qata_mini.md").read_text()
    assert json.loads((tmp_path / "qata_mini.json").read_text()) == json.loads((RESULTS / "qata_mini.json").read_text())


def test_short_runs_through_the_engine_write_a_report(bench, tmp_path):
    pytest.importorskip("segmentation_models_pytorch", reason="the U-Net row needs the bench extra")
    code = bench.main(["--data", str(sample_root()), "--runs", "tgcnet,unet", "--minutes", "0.05",
                       "--image-size", "64", "--device", "cpu", "--threads", "0", "--work", str(tmp_path / "work"),
                       "--out", str(tmp_path / "out")])
    assert code == 0
    report = json.loads((tmp_path / "out" / "qata_mini.json").read_text())
    assert set(report["results"]) == {"tgcnet", "unet"}
    noise = report["results"]["tgcnet"]["setup"]["caption_noise"]
    # the canonical caption form undoes every rewrite of the noisy copy: nothing lost
    assert noise["noisy"] == noise["clean"]
    unet = report["results"]["unet"]
    assert unet["trainable_params"] == unet["total_params"] > 1_000_000
    assert 0 <= unet["test"]["dice"] <= 1
    md = (tmp_path / "out" / "qata_mini.md").read_text()
    assert "## Captions as users write them" in md and "| unet |" in md
