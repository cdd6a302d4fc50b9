"""benchmarks.accuracy.qata_mini: a short run of each kind of row (TGCNet with the noisy-caption scoring, the
caption-free U-Net and CLIPSeg through the engine's model_factory hook) ends with a report carrying evaluate's
numbers; seeds give a mean ± sd table, a training subset is the same fixed images for every run, and --report
renders a report's markdown from its JSON alone."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from benchmarks.accuracy import qata_mini
from benchmarks.accuracy.qata_report import to_markdown
from tgcnet.data import read_split
from tgcnet.data.sample import sample_root


def _args(tmp_path, *extra):
    return ["--data", str(sample_root()), "--minutes", "0.05", "--image-size", "64", "--device", "cpu",
            "--threads", "0", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), *extra]


def _report(tmp_path):
    return json.loads((tmp_path / "out" / "qata_mini.json").read_text())


def _run_dir(tmp_path, key) -> Path:
    (stamp,) = (tmp_path / "work").iterdir()
    return stamp / key


def _evaluated(tmp_path, key) -> dict:
    """What ``evaluate`` wrote for the run's test split."""
    return json.loads((_run_dir(tmp_path, key) / "eval_test" / "metrics.json").read_text())


def test_short_runs_through_the_engine_write_a_report(tmp_path):
    pytest.importorskip("segmentation_models_pytorch", reason="the U-Net row needs the bench extra")
    assert qata_mini.main(_args(tmp_path, "--runs", "tgcnet,unet")) == 0
    report = _report(tmp_path)
    assert set(report["results"]) == {"tgcnet@m0.05", "unet@m0.05"}   # a short budget marks the key
    noise = report["results"]["tgcnet@m0.05"]["setup"]["caption_noise"]
    # the canonical caption form undoes every rewrite of the noisy copy: nothing lost
    assert noise["noisy"] == noise["clean"]
    unet = report["results"]["unet@m0.05"]
    assert unet["trainable_params"] == unet["total_params"] > 1_000_000
    metrics = _evaluated(tmp_path, "unet@m0.05")
    assert {k: unet["test"][k] for k in ("dice", "pooled_dice", "n_images")} == {
        k: metrics[k] for k in ("dice", "pooled_dice", "n_images")}
    assert unet["test"]["side_error"] is None            # it reads no caption: no side to get wrong
    md = (tmp_path / "out" / "qata_mini.md").read_text()
    assert report["commit"] and f"at commit {report['commit']}" in md   # which code wrote the numbers
    assert "## Captions as users write them" in md and "| unet@m0.05 |" in md
    # --report renders the markdown again from the JSON alone, the JSON kept byte for byte
    again = tmp_path / "again"
    assert qata_mini.main(["--report", str(tmp_path / "out" / "qata_mini.json"), "--out", str(again)]) == 0
    assert (again / "qata_mini.json").read_bytes() == (tmp_path / "out" / "qata_mini.json").read_bytes()
    assert (again / "qata_mini.md").read_text() == md


def test_clipseg_row_trains_its_decoder_only(tmp_path):
    pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from benchmarks.accuracy.clipseg_model import CLIPSegSegmenter

    assert qata_mini.main(_args(tmp_path, "--runs", "clipseg")) == 0
    res = _report(tmp_path)["results"]["clipseg@m0.05"]
    torch.manual_seed(0)   # the trainer seeds torch with the run's seed before building the model
    fresh = CLIPSegSegmenter(image_size=64, preset="tgcnet-cpu")
    count = lambda module: sum(p.numel() for p in module.parameters())
    assert res["trainable_params"] == count(fresh.model.decoder) > 0
    assert res["total_params"] == count(fresh) == count(fresh.model.clip) + count(fresh.model.decoder)
    assert res["setup"]["trained"] == "decoder only (CLIP frozen)" and res["seed"] == 0
    metrics = _evaluated(tmp_path, "clipseg@m0.05")
    assert res["test"]["dice"] == metrics["dice"]
    assert res["test"]["side_error"] == metrics["side_error"] is not None    # it reads the captions
    log = [json.loads(line) for line in (_run_dir(tmp_path, "clipseg@m0.05") / "log.jsonl").read_text().splitlines()]
    assert res["val_curve"] == [[e["time"], e["val_dice"]] for e in log if e.get("val_dice") is not None]
    assert res["val_curve"] and res["epochs"] == len(log)
    # the trained weights: CLIP bit-identical to its fixed init, the decoder moved away from its init
    saved = load_file(str(_run_dir(tmp_path, "clipseg@m0.05") / "best" / "model.safetensors"))
    start = fresh.state_dict()
    clip = [k for k in start if k.startswith("model.clip.")]
    decoder = [k for k in start if k.startswith("model.decoder.")]
    assert clip and decoder and len(clip) + len(decoder) == len(start) == len(saved)
    assert all(torch.equal(saved[k], start[k]) for k in clip)
    assert any(not torch.equal(saved[k], start[k]) for k in decoder)
    assert "| clipseg@m0.05 |" in (tmp_path / "out" / "qata_mini.md").read_text()


def test_seeds_give_one_row_per_seed_and_a_mean_sd_table(tmp_path):
    pytest.importorskip("segmentation_models_pytorch", reason="the U-Net row needs the bench extra")
    assert qata_mini.main(_args(tmp_path, "--runs", "unet", "--seeds", "0,1", "--minutes", "0.02")) == 0
    results = _report(tmp_path)["results"]
    assert list(results) == ["unet@m0.02", "unet@m0.02@s1"]   # seed 0 has no seed mark
    assert [r["seed"] for r in results.values()] == [0, 1]
    dice = [r["test"]["dice"] for r in results.values()]
    pooled = [r["test"]["pooled_dice"] for r in results.values()]
    assert dice[0] != dice[1]   # the seed reached the training
    md = (tmp_path / "out" / "qata_mini.md").read_text()
    assert "## Mean ± sd over seeds" in md
    val = [r["best_val_dice"] for r in results.values()]
    row = (f"| unet | 0.02 min | 0, 1 | {statistics.fmean(val):.4f} ± {statistics.stdev(val):.4f} | "
           f"{statistics.fmean(dice):.4f} ± {statistics.stdev(dice):.4f} | "
           f"{statistics.fmean(pooled):.4f} ± {statistics.stdev(pooled):.4f} |")
    assert row in md
    # --collect keeps the seeded keys, and the table
    qata_mini.main(["--collect", str(tmp_path / "out" / "qata_mini.json"), "--out", str(tmp_path / "merged"),
                    "--side-by-side", "2"])
    merged = json.loads((tmp_path / "merged" / "qata_mini.json").read_text())
    assert all("2 process(es) side by side" in r["setup"]["finished"] for r in merged["results"].values())
    assert list(merged["results"]) == ["unet@m0.02", "unet@m0.02@s1"]
    assert (tmp_path / "merged" / "qata_mini.md").read_text() == to_markdown(merged) and row in to_markdown(merged)


def test_train_subset_is_the_same_fixed_images_for_every_run(tmp_path):
    pytest.importorskip("segmentation_models_pytorch", reason="the U-Net row needs the bench extra")
    pytest.importorskip("transformers")
    assert qata_mini.main(_args(tmp_path, "--runs", "clipseg,unet", "--train-subset", "8", "--minutes", "0.02")) == 0
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
    again = qata_mini.make_train_subset(sample_root(), 8, 0, tmp_path / "again")[1]
    four = qata_mini.make_train_subset(sample_root(), 4, 0, tmp_path / "four")[1]
    other = qata_mini.make_train_subset(sample_root(), 8, 1, tmp_path / "other")[1]
    assert again == names[0] and set(four) < set(again) and other != again
    assert qata_mini.main(_args(tmp_path, "--runs", "unet", "--train-subset", "999")) == 2


def test_unknown_runs_are_refused_before_training(tmp_path, capsys):
    assert qata_mini.main(_args(tmp_path, "--runs", "tgcnet,nothing")) == 2
    assert "unknown run(s) ['nothing']" in capsys.readouterr().err and not (tmp_path / "work").exists()


def test_a_scarce_mask_run_trains_semi_supervised_and_records_its_split(tmp_path):
    assert qata_mini.main(_args(tmp_path, "--runs", "semi50")) == 0
    res = _report(tmp_path)["results"]["semi50@m0.05"]
    assert res["setup"]["train_overrides"] == {"labelled_fraction": 0.5, "pseudo_label_weight": 1.0,
                                               "language_loss_weight": 1.0, "count_loss_weight": 0.0}
    split = res["setup"]["labelled_split"]
    assert (split["fraction"], split["seed"], split["n_labelled"] + split["n_unlabelled"]) == (0.5, 0, 32)
    assert split["n_labelled"] == 16 and res["train_images"] == 32   # every image trains; half keep their mask
    cfg = json.loads((_run_dir(tmp_path, "semi50@m0.05") / "train_config.json").read_text())["train"]
    assert (cfg["semi_supervised"], cfg["labelled_fraction"]) == (True, 0.5)
    assert "## Training with scarce masks (0.05 min training each)" in (tmp_path / "out" / "qata_mini.md").read_text()
