"""Recipes: published protocols as TrainConfig values; explicit options win over them, they win over defaults."""
from __future__ import annotations

import dataclasses
import json

import pytest

import tgcnet.recipes as recipes
from tgcnet.cli import build_parser, main
from tgcnet.cli.train import _recipe_notes, train_config_from_args
from tgcnet.config import list_presets
from tgcnet.data import sample_root
from tgcnet.engine.train_config import TrainConfig
from tgcnet.recipes import RESERVED, list_recipes, load_recipe, recipe_values

SAMPLE = str(sample_root())
NAMES = ["mosmeddata-plus", "qata-cov19"]
#: what a CPU test overrides: the sample's layout, a tiny model, a small size, two steps
SMALL = ["--data", SAMPLE, "--layout", "simple", "--preset", "tgcnet-tiny", "--image-size", "64", "--max-steps", "2",
         "--knowledge", "none", "--device", "cpu", "--no-progress", "--threads", "1"]


def test_the_shipped_recipes():
    assert list_recipes() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_each_recipe_is_checked_sourced_and_buildable(name):
    recipe = load_recipe(name)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for group, body in recipe["train"].items():
        assert body["source"].strip(), group
        assert set(body["values"]) <= fields - set(RESERVED), group
    assert set(recipe["presets"]) == {"tgcnet-vit-b16", "tgcnet-biomedclip"} <= set(list_presets())
    assert recipe_values(name)["preset"] in recipe["presets"]
    assert recipe["batch_size"].startswith("per process")
    assert recipe["resources"]["gpu_time"] == recipe["resources"]["gpu_memory"] == "unmeasured"
    assert recipe["evaluate"]["split"] == "test" and "--split test" in recipe["evaluate"]["command"]
    for row in recipe["published"]:
        assert row["kind"] in ("per-image", "pooled", "n/r") and row["source"], row
        assert row["dice"] is not None or row["kind"] == "n/r", row
    cfg = TrainConfig.from_recipe(name, data="d")
    assert cfg.recipe == name and all(getattr(cfg, k) == v for k, v in recipe_values(name).items())


@pytest.mark.parametrize("name", NAMES)
def test_the_published_protocol(name):
    """LViT's splits and 224 px; GuideDecoder's AdamW at 3e-4, batch 32 on one GPU, 100 epochs; no clipping."""
    v = recipe_values(name)
    assert (v["layout"], v["train_split"], v["val_split"]) == ("lvit", "train", "valid")
    assert (v["image_size"], v["lr"], v["batch_size"], v["epochs"], v["weight_decay"]) == (224, 3e-4, 32, 100, 0.01)
    assert v["warmup_steps"] == 0 and v["clip_grad"] is None
    assert v["min_lr_ratio"] == pytest.approx(1e-6 / 3e-4, rel=1e-3)
    assert v["preset"] == "tgcnet-vit-b16" and v["threshold"] == 0.5 and v["amp"] == "none"


def test_explicit_values_win_over_the_recipe_which_wins_over_the_defaults():
    defaults = TrainConfig(data="d")
    cfg = TrainConfig.from_recipe("qata-cov19", data="d", lr=1e-3, preset="tgcnet-biomedclip",
                                  model_overrides={"sse__channels": 32})
    assert (cfg.lr, cfg.preset, cfg.model_overrides) == (1e-3, "tgcnet-biomedclip", {"sse__channels": 32})
    assert cfg.batch_size == 32 != defaults.batch_size and cfg.warmup_steps == 0 != defaults.warmup_steps
    assert cfg.workers == defaults.workers and cfg.out == defaults.out  # not in the recipe
    # the same through the command line
    args = build_parser().parse_args(["train", "--recipe", "qata-cov19", "--data", "d", "--lr", "0.001",
                                      "--clip-grad", "2", "--val-split", "none"])
    cfg = train_config_from_args(args)
    assert (cfg.lr, cfg.clip_grad, cfg.val_split, cfg.batch_size, cfg.recipe) == (1e-3, 2.0, None, 32, "qata-cov19")
    with pytest.raises(ValueError, match="data=DIR"):
        TrainConfig.from_recipe("qata-cov19")


def test_unknown_recipe_is_exit_2_listing_the_names(capsys):
    assert main(["train", "--recipe", "qata", "--data", SAMPLE]) == 2
    assert main(["train", "--recipe", "qata"]) == 2  # the name is checked before anything else
    err = capsys.readouterr().err
    assert err.count("unknown recipe 'qata'") == 2 and all(n in err for n in NAMES)
    with pytest.raises(ValueError, match="mosmeddata-plus, qata-cov19"):
        TrainConfig.from_recipe("nope", data="d")


def test_data_in_another_layout_needs_layout_given(tmp_path, capsys):
    assert main(["train", "--recipe", "qata-cov19", "--data", SAMPLE, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "'lvit' release" in err and "'simple' layout" in err and "--layout simple" in err
    assert not (tmp_path / "run").exists()


def test_recipe_list(capsys):
    assert main(["train", "--recipe", "list"]) == 0
    out = capsys.readouterr().out
    assert all(f"{n}: " in out for n in NAMES) and "lr=0.0003" in out and "unmeasured" in out
    assert "per process" in out and "--split test" in out


@pytest.mark.parametrize("values, problem", [
    ({"learning_rate": 1}, "'learning_rate' is not a TrainConfig field"),
    ({"data": "/somewhere"}, "'data' is the user's to give"),
    ({"lr": 1e-3}, "'lr' is set in groups 'a' and 'b'"),
])
def test_a_bad_recipe_file_is_refused(tmp_path, monkeypatch, values, problem):
    good = load_recipe("qata-cov19")
    good["name"] = "mine"
    good["train"] = {"a": {"values": {"lr": 3e-4}, "source": "x"}, "b": {"values": values, "source": "y"}}
    (tmp_path / "mine.json").write_text(json.dumps(good))
    monkeypatch.setattr(recipes, "RECIPE_DIR", tmp_path)
    with pytest.raises(ValueError, match=problem):
        TrainConfig.from_recipe("mine", data="d")   # reading it (load_recipe) checks all but the field names
    good["train"] = {"a": {"values": {"lr": 3e-4}, "source": " "}}
    (tmp_path / "mine.json").write_text(json.dumps(good))
    with pytest.raises(ValueError, match="group 'a' needs a 'source'"):
        load_recipe("mine")


def test_notes_for_torchrun_and_a_missing_checkpoint(monkeypatch):
    args = build_parser().parse_args(["train", "--recipe", "qata-cov19", "--data", "d"])
    cfg = train_config_from_args(args)
    monkeypatch.setenv("WORLD_SIZE", "4")
    notes = _recipe_notes(cfg, args)
    assert any("no --pretrained" in n for n in notes)
    assert any("global batch of 128" in n and "--batch-size 8" in n for n in notes)
    given = build_parser().parse_args(["train", "--recipe", "qata-cov19", "--data", "d", "--batch-size", "8",
                                       "--pretrained", "ckpt.safetensors"])
    assert _recipe_notes(train_config_from_args(given), given) == []
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert any("does not split evenly over 3" in n for n in _recipe_notes(cfg, args))
    monkeypatch.setenv("RANK", "1")
    assert _recipe_notes(cfg, args) == []  # rank 0 speaks for all


def _saved(run) -> dict:
    return json.loads((run / "train_config.json").read_text())["train"]


def test_qata_recipe_trains_on_the_sample_and_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--recipe", "qata-cov19", *SMALL, "--out", str(run)]) == 0
    saved = _saved(run)
    recipe = recipe_values("qata-cov19")
    overridden = {"layout": "simple", "preset": "tgcnet-tiny", "image_size": 64, "knowledge": "none"}
    for key, value in recipe.items():
        assert saved[key] == overridden.get(key, value), key
    assert saved["max_steps"] == 2 and saved["recipe"] == "qata-cov19" and saved["batch_size"] == 32
    captured = capsys.readouterr()
    assert "no --pretrained" in captured.err
    assert f"--checkpoint {run} --data {SAMPLE} --layout simple --split test" in captured.out
    # a recipe run resumes like any other: its values come back from train_config.json
    assert main(["train", "--resume", str(run), "--recipe", "qata-cov19"]) == 2
    assert "drop --recipe" in capsys.readouterr().err
    resumed = train_config_from_args(build_parser().parse_args(["train", "--resume", str(run), "--max-steps", "3"]))
    assert (resumed.recipe, resumed.lr, resumed.warmup_steps, resumed.max_steps) == ("qata-cov19", 3e-4, 0, 3)
    assert main(["train", "--resume", str(run), "--max-steps", "3", "--no-progress"]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and _saved(run)["recipe"] == "qata-cov19"


def test_mosmeddata_recipe_trains_with_overrides(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--recipe", "mosmeddata-plus", *SMALL, "--batch-size", "8", "--lr", "0.002",
                 "--clip-grad", "0.5", "--out", str(run)]) == 0
    saved = _saved(run)
    assert (saved["batch_size"], saved["lr"], saved["clip_grad"], saved["recipe"]) == (8, 0.002, 0.5, "mosmeddata-plus")
    assert (saved["epochs"], saved["warmup_steps"], saved["weight_decay"]) == (100, 0, 0.01)  # the recipe's
    assert (run / "best" / "config.json").is_file()
    assert json.loads((run / "log.jsonl").read_text().splitlines()[-1])["step"] == 2


def test_recipe_list_loads_no_torch():
    import os
    import subprocess
    import sys

    code = ("from tgcnet.cli import main; main(['train', '--recipe', 'list']); import sys; "
            "print([m for m in ('torch', 'open_clip', 'timm') if m in sys.modules])")
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
