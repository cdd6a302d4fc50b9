from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tgcnet.cli import main
from tgcnet.data import sample_root
from tgcnet.cli.demo import run_demo

SAMPLE = str(sample_root())
TINY = ["--image-size", "64", "--batch-size", "8", "--knowledge", "none", "--device", "cpu", "--no-progress",
        "--warmup-steps", "1"]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: avoids OpenMP oversubscription on the shared 2-core CI."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_train_resume_evaluate_predict(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", SAMPLE, "--out", str(run), "--epochs", "1", "--set", "decoder.channels=8",
                 *TINY]) == 0
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["model"]["decoder"]["channels"] == 8 and saved["train"]["epochs"] == 1
    # --resume alone restores the saved options; a larger --epochs extends the run
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0, 1] and log[-1]["step"] == 8

    assert main(["evaluate", "--checkpoint", str(run), "--data", SAMPLE, "--split", "valid"]) == 0
    metrics = json.loads((run / "eval_valid" / "metrics.json").read_text())
    assert metrics["n_images"] == 8 and metrics["image_size"] == 64
    assert (run / "eval_valid" / "per_image.csv").is_file()

    test = sample_root() / "test"
    image = sorted((test / "images").iterdir())[0]
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(run / "best"), "--image", str(image), "--text",
                 "unilateral pulmonary infection, lower left lung.", "--out", str(out)]) == 0
    assert (out / f"{image.stem}_mask.png").is_file() and (out / f"{image.stem}_overlay.png").is_file()
    assert "foreground" in capsys.readouterr().out


def test_evaluate_reports_the_best_epoch(tmp_path):
    """The best/ checkpoint re-evaluated on valid gives the validation Dice it was selected for."""
    run = tmp_path / "run"
    assert main(["train", "--data", SAMPLE, "--out", str(run), "--epochs", "2", "--lr", "3e-3", *TINY]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    best = max(log, key=lambda e: e["val_dice"])
    assert main(["evaluate", "--checkpoint", str(run), "--data", SAMPLE, "--split", "valid",
                 "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["dice"] == pytest.approx(best["val_dice"], abs=1e-9)
    assert metrics["pooled_dice"] == pytest.approx(best["val_pooled_dice"], abs=1e-9)


@pytest.mark.parametrize("argv,message", [
    (["train", "--out", "x"], "--data DIR is required"),
    (["train", "--data", "/no/such/dir", "--out", "x"], "/no/such/dir"),
    (["train", "--data", SAMPLE, "--set", "nokey"], "key=value"),
    (["train", "--resume", "/no/such/run"], "/no/such/run"),
    (["evaluate", "--checkpoint", "/no/such/run", "--data", SAMPLE], "/no/such/run"),
    (["predict", "--checkpoint", "/no/such/run", "--out", "x", "--image", "a.png", "--text", "t"], "a.png"),
])
def test_errors_are_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith(f"tgcnet {argv[0]}: error:")


def test_failed_first_run_then_fixed_command_runs_without_resume(tmp_path, capsys):
    """A first run refused for a bad option writes nothing, so the corrected command just runs."""
    run = str(tmp_path / "run")
    args = ["train", "--data", SAMPLE, "--out", run, "--max-steps", "1", "--val-split", "none", *TINY]
    assert main([*args, "--image-size", "100"]) == 2
    err = capsys.readouterr().err
    assert "image_size 100" in err and "patch size 16" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
    assert main([*args, "--image-size", "64"]) == 0
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["train"]["image_size"] == 64


def test_demo_runs_end_to_end(tmp_path):
    result = run_demo(tmp_path / "demo", minutes=0.05, image_size=64, epochs=1, device="cpu", progress=False)
    m = result["metrics"]
    assert m["n_images"] == 8 and 0 <= m["dice"] <= 1 and 0 <= m["pooled_dice"] <= 1
    assert result["n_overlays"] == 8 and len(list((tmp_path / "demo" / "overlays").glob("*_overlay.png"))) == 8
    assert (tmp_path / "demo" / "eval_test" / "metrics.json").is_file()
    with pytest.raises(ValueError, match="--force"):
        run_demo(tmp_path / "demo", minutes=0.05, image_size=64, epochs=1, device="cpu", progress=False)


def test_module_entry_point_lists_engine_commands():
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1")
    res = subprocess.run([sys.executable, "-m", "tgcnet.cli", "--help"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0
    for command in ("train", "evaluate", "predict", "demo"):
        assert command in res.stdout
