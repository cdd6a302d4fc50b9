"""The qata-mini accuracy benchmark: its report is rebuilt exactly from its JSON, and a short run of
each kind of row (TGCNet with the noisy-caption scoring, the caption-free U-Net and CLIPSeg through the
engine's model_factory hook) ends with a report; seeds give a mean ± sd table, a training subset is
the same fixed images for every run, and plots.py draws its two figures."""
import importlib
import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch

from helpers import benchmark_module
from tgcnet.data.sample import sample_root

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("qata_mini") as module:
        yield module


def test_collect_rebuilds_the_committed_report(bench, tmp_path):
    for png in RESULTS.glob("qata_mini_*.png"):   # the report links the figures present beside it
        shutil.copy(png, tmp_path)
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
    assert set(report["results"]) == {"tgcnet@m0.05", "unet@m0.05"}   # a short budget marks the key
    noise = report["results"]["tgcnet@m0.05"]["setup"]["caption_noise"]
    # the canonical caption form undoes every rewrite of the noisy copy: nothing lost
    assert noise["noisy"] == noise["clean"]
    unet = report["results"]["unet@m0.05"]
    assert unet["trainable_params"] == unet["total_params"] > 1_000_000
    assert 0 <= unet["test"]["dice"] <= 1
    md = (tmp_path / "out" / "qata_mini.md").read_text()
    assert report["commit"] and f"at commit {report['commit']}" in md   # which code wrote the numbers
    assert "## Captions as users write them" in md and "| unet@m0.05 |" in md


def _args(tmp_path, *extra):
    return ["--data", str(sample_root()), "--minutes", "0.05", "--image-size", "64", "--device", "cpu",
            "--threads", "0", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), *extra]


def _report(tmp_path):
    return json.loads((tmp_path / "out" / "qata_mini.json").read_text())


def _run_dir(tmp_path, key):
    (stamp,) = (tmp_path / "work").iterdir()
    return stamp / key


def test_clipseg_row_trains_its_decoder_only(bench, tmp_path):
    pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from clipseg_model import CLIPSegSegmenter

    assert bench.main(_args(tmp_path, "--runs", "clipseg")) == 0
    res = _report(tmp_path)["results"]["clipseg@m0.05"]
    torch.manual_seed(0)   # the trainer seeds torch with the run's seed before building the model
    fresh = CLIPSegSegmenter(image_size=64, preset="tgcnet-cpu")
    count = lambda module: sum(p.numel() for p in module.parameters())
    assert res["trainable_params"] == count(fresh.model.decoder) > 0
    assert res["total_params"] == count(fresh) == count(fresh.model.clip) + count(fresh.model.decoder)
    assert res["setup"]["trained"] == "decoder only (CLIP frozen)" and res["seed"] == 0
    assert 0 <= res["test"]["dice"] <= 1 and res["test"]["side_error"] is not None   # it reads the captions
    assert res["val_curve"] and all(0 <= d <= 1 for _, d in res["val_curve"])
    # the trained weights: CLIP bit-identical to its fixed init, the decoder moved away from its init
    saved = load_file(str(_run_dir(tmp_path, "clipseg@m0.05") / "best" / "model.safetensors"))
    start = fresh.state_dict()
    clip = [k for k in start if k.startswith("model.clip.")]
    decoder = [k for k in start if k.startswith("model.decoder.")]
    assert clip and decoder and len(clip) + len(decoder) == len(start) == len(saved)
    assert all(torch.equal(saved[k], start[k]) for k in clip)
    assert any(not torch.equal(saved[k], start[k]) for k in decoder)
    assert "| clipseg@m0.05 |" in (tmp_path / "out" / "qata_mini.md").read_text()


def test_clipseg_wrapper_takes_one_caption_per_image_and_answers_at_input_size(bench):
    pytest.importorskip("transformers")
    from clipseg_model import CLIPSegSegmenter
    from tgcnet.tokenizer import OpenClipTokenizer

    model = CLIPSegSegmenter(image_size=64).eval()
    image = torch.rand(1, 3, 72, 72)   # not a multiple of the patch: CLIPSeg gives 64 px, resized to 72
    captions = ["unilateral pulmonary infection, one infected area, lower left lung.",
                "bilateral pulmonary infection, two infected areas, upper left lung and upper right lung."]
    with torch.no_grad():
        both = model(image.expand(2, -1, -1, -1), captions)
        alone = model(image, captions[1:])
    assert both.shape == (2, 1, 72, 72) and alone.shape == (1, 1, 72, 72)
    assert not torch.allclose(both[0], both[1])          # each image is conditioned on its own caption
    torch.testing.assert_close(both[1], alone[0], rtol=1e-4, atol=1e-3)  # and on no other caption of the batch
    ids, mask = model.tokenize(captions)
    assert ids[0, :int(mask[0].sum())].tolist() == OpenClipTokenizer(77).encode(captions[:1])[0]
    with pytest.raises(ValueError, match="one caption per image"):
        model(image, captions)


def test_clipseg_decoder_starts_from_torch_init_so_its_first_logits_are_small(bench):
    """transformers' generic init draws the decoder's weights from N(0, 1) (CLIPSeg's initializer_factor);
    from scratch that gives logits in the thousands and an all-background collapse in the first epoch."""
    pytest.importorskip("transformers")
    from clipseg_model import CLIPSegSegmenter

    torch.manual_seed(0)
    model = CLIPSegSegmenter(image_size=64).eval()
    film = model.model.decoder.film_mul.weight
    assert film.std() < 0.2                     # PyTorch's Kaiming-uniform: 1/sqrt(3 * 64) ~ 0.07, not 1.0
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 64, 64), ["bilateral pulmonary infection."] * 2)
    assert logits.abs().max() < 5


def test_seeds_give_one_row_per_seed_and_a_mean_sd_table(bench, tmp_path):
    pytest.importorskip("segmentation_models_pytorch", reason="the U-Net row needs the bench extra")
    assert bench.main(_args(tmp_path, "--runs", "unet", "--seeds", "0,1", "--minutes", "0.02")) == 0
    results = _report(tmp_path)["results"]
    assert list(results) == ["unet@m0.02", "unet@m0.02@s1"]   # seed 0 has no seed mark
    assert [r["seed"] for r in results.values()] == [0, 1]
    dice = [r["test"]["dice"] for r in results.values()]
    pooled = [r["test"]["pooled_dice"] for r in results.values()]
    assert dice[0] != dice[1]   # the seed reached the training
    md = (tmp_path / "out" / "qata_mini.md").read_text()
    assert "## Mean ± sd over seeds" in md and "exceeds the spread" in md
    val = [r["best_val_dice"] for r in results.values()]
    row = (f"| unet | 0.02 min | 0, 1 | {statistics.fmean(val):.4f} ± {statistics.stdev(val):.4f} | "
           f"{statistics.fmean(dice):.4f} ± {statistics.stdev(dice):.4f} | "
           f"{statistics.fmean(pooled):.4f} ± {statistics.stdev(pooled):.4f} |")
    assert row in md
    # --collect keeps the seeded keys, and the table
    bench.main(["--collect", str(tmp_path / "out" / "qata_mini.json"), "--out", str(tmp_path / "merged"),
                "--side-by-side", "2"])
    merged = json.loads((tmp_path / "merged" / "qata_mini.json").read_text())
    assert all("2 process(es) side by side" in r["setup"]["finished"] for r in merged["results"].values())
    assert list(merged["results"]) == ["unet@m0.02", "unet@m0.02@s1"] and row in (tmp_path / "merged" / "qata_mini.md").read_text()


def test_train_subset_is_the_same_fixed_images_for_every_run(bench, tmp_path):
    pytest.importorskip("segmentation_models_pytorch", reason="the U-Net row needs the bench extra")
    pytest.importorskip("transformers")
    from tgcnet.data import read_split

    assert bench.main(_args(tmp_path, "--runs", "clipseg,unet", "--train-subset", "8", "--minutes", "0.02")) == 0
    results = _report(tmp_path)["results"]
    assert list(results) == ["clipseg@n8@m0.02", "unet@n8@m0.02"]
    all_names = {t.name for t in read_split(sample_root(), "train")}
    names = [r["setup"]["train_subset"]["names"] for r in results.values()]
    assert names[0] == names[1] and len(set(names[0])) == 8 and set(names[0]) < all_names
    for key, r in results.items():
        assert r["train_images"] == 8 and r["test"]["n_images"] == len(read_split(sample_root(), "test"))
        assert r["steps"] == r["epochs"]   # 8 images at batch size 8: one step per epoch
        cfg = json.loads((_run_dir(tmp_path, key) / "train_config.json").read_text())["train"]
        assert sorted(t.name for t in read_split(cfg["data"], "train")) == names[0]
    # fixed by the subset seed, and nested across sizes
    again = bench.make_train_subset(sample_root(), 8, 0, tmp_path / "again")[1]
    four = bench.make_train_subset(sample_root(), 4, 0, tmp_path / "four")[1]
    other = bench.make_train_subset(sample_root(), 8, 1, tmp_path / "other")[1]
    assert again == names[0] and set(four) < set(again) and other != again
    assert bench.main(_args(tmp_path, "--runs", "unet", "--train-subset", "999")) == 2


def _synthetic(key, dice, n=600, seed=0, curve=None, minutes=30.0, val=None):
    """A result as qata_mini.py writes it; its best validation Dice is ``val``, else ``dice``."""
    return {"run": key, "test": {"dice": dice, "iou": dice / 2, "pooled_dice": dice + 0.05, "pooled_iou": dice / 2,
                                 "n_images": 300, "side_error": None, "side_error_n": 0},
            "trainable_params": 10, "total_params": 20, "budget_minutes": minutes, "train_seconds": 60.0 + dice,
            "epochs": 3, "steps": 30, "best_val_dice": dice if val is None else val, "best_epoch": 2, "seed": seed, "train_images": n,
            "val_curve": curve or [], "setup": {}}


def test_plots_draws_both_figures_and_the_report_links_them(bench, tmp_path):
    pytest.importorskip("matplotlib")
    plots = importlib.import_module("plots")
    from qata_report import targets, write_report

    curve = [[60.0, 0.3], [120.0, 0.5], [180.0, 0.55]]
    rows = [_synthetic("tgcnet@n50", 0.50, 50, curve=curve), _synthetic("tgcnet@n50@s1", 0.60, 50, 1, curve),
            _synthetic("tgcnet@n50@s2", 0.55, 50, 2), _synthetic("tgcnet", 0.70, 600, curve=curve),
            _synthetic("notext", 0.65, 600), _synthetic("unet@n50", 0.40, 50), _synthetic("unet", 0.68, 600),
            _synthetic("clipseg", 0.45, 600, curve=curve), _synthetic("base", 0.9, 600, curve=curve, minutes=10),
            _synthetic("tgcnet@m10", 0.66, 600, curve=curve, minutes=10),
            _synthetic("tgcnet_deepsup@m10", 0.67, 600, curve=curve, minutes=10)]
    results = {r["run"]: r for r in rows}
    report = {"date": "2026-01-01 00:00", "data": "qata-mini", "n_train": 600, "n_valid": 150, "n_test": 300,
              "image_size": 224, "device": "cpu", "threads": 1, "torch": "x", "python": "3", "pretrained": None,
              "results": results, "targets": targets(results), "notes": []}
    out = tmp_path / "out"
    write_report(report, out, quiet=True)
    assert "## Plots" not in (out / "qata_mini.md").read_text()   # nothing to link yet
    assert plots.main([str(out / "qata_mini.json"), "--out", str(out)]) == 0
    for name in ("qata_mini_data_efficiency.png", "qata_mini_val_curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in (out / "qata_mini.md").read_text()
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


def test_result_keys_mark_subset_budget_and_seed_and_parse_back(bench):
    from qata_runs import run_key, seed_group, split_key, without_budget

    assert run_key("tgcnet", 0, None, 30) == "tgcnet"              # the standard run keeps its plain name
    assert run_key("base", 0, None, 10) == "base"                  # ablations' standard budget is 10 min
    key = run_key("unet", 2, 50, 4)
    assert key == "unet@n50@m4@s2" and split_key(key) == ("unet", 50, 2)
    assert seed_group(key) == "unet@n50@m4" and without_budget(key) == "unet@n50@s2"
    with pytest.raises(ValueError, match="unknown mark"):
        split_key("unet@x3")


def test_levers_are_judged_against_the_baseline_on_validation_ranges_only(bench):
    from qata_report import lever_rows, to_markdown
    from qata_runs import key_budget, split_key

    scored = {  # key -> (best validation Dice, test Dice)
        "tgcnet@m10": (0.720, 0.76), "tgcnet@m10@s1": (0.724, 0.77), "tgcnet@m10@s2": (0.722, 0.76),
        # ranges overlap on valid, however good on test: no finding
        "tgcnet_deepsup@m10": (0.723, 0.90), "tgcnet_deepsup@m10@s1": (0.726, 0.90),
        "tgcnet_deepsup@m10@s2": (0.725, 0.90),
        "tgcnet_wide@m10": (0.730, 0.70), "tgcnet_wide@m10@s1": (0.731, 0.70), "tgcnet_wide@m10@s2": (0.729, 0.70),
        "tgcnet_lowbce@m10": (0.70, 0.76), "tgcnet_lowbce@m10@s1": (0.71, 0.76),
        # a single seed, or another budget than the baseline's, makes no lever row
        "tgcnet_lora@m10": (0.80, 0.80), "tgcnet_deepsup@m4": (0.9, 0.9), "tgcnet_deepsup@m4@s1": (0.9, 0.9)}
    results = {key: _synthetic(key, dice, seed=split_key(key)[2], minutes=key_budget(key),
                               val=val) for key, (val, dice) in scored.items()}
    rows = {r["run"]: r for r in lever_rows(results)}
    assert set(rows) == {"tgcnet_deepsup@m10", "tgcnet_wide@m10", "tgcnet_lowbce@m10"}
    assert rows["tgcnet_deepsup@m10"]["verdict"] == "within the spread"
    assert rows["tgcnet_wide@m10"]["verdict"] == "better"        # valid decides, though test fell
    assert rows["tgcnet_lowbce@m10"]["verdict"] == "worse"
    assert rows["tgcnet_wide@m10"]["val_dice"]["gain"] == pytest.approx(0.008)
    assert rows["tgcnet_lowbce@m10"]["same_seed_val_gains"] == pytest.approx({0: -0.02, 1: -0.014})
    assert rows["tgcnet_wide@m10"]["dice"]["gain"] == pytest.approx(0.70 - statistics.fmean([0.76, 0.77, 0.76]))
    report = {"date": "d", "device": "cpu", "torch": "t", "threads": 1, "data": "qata-mini", "n_train": 1,
              "n_valid": 1, "n_test": 1, "image_size": 64, "results": results, "targets": [], "notes": []}
    md = to_markdown(report)
    assert "## Accuracy levers" in md
    assert "| tgcnet_wide | 1.5 times the fusion" in md and "| +0.80 | +1.00, +0.70, +0.70 | -6.33 | -6.33 | better |" in md
