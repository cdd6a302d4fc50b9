"""``tgcnet train``: train, resume, evaluate and predict from the command line; a failed first run leaves nothing behind."""
from __future__ import annotations

import json

from helpers import TINY_TRAIN_ARGS as TINY
from tgcnet.cli import main
from tgcnet.data import sample_root

SAMPLE = str(sample_root())


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


def test_missing_masks_fail_with_the_way_out_then_train_with_semi_supervised(tmp_path, capsys):
    import shutil

    from tgcnet.data import read_split

    root = tmp_path / "data"
    shutil.copytree(SAMPLE, root)
    read_split(root, "train")[0].mask_path.unlink()
    run = str(tmp_path / "run")
    args = ["train", "--data", str(root), "--out", run, "--max-steps", "1", "--val-split", "none", *TINY]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "mask not found" in err and "--semi-supervised" in err and "Traceback" not in err
    assert main([*args, "--semi-supervised"]) == 0
    err = capsys.readouterr().err
    assert "semi-supervised: 31 of 32 training images labelled, 1 unlabelled (1 without a mask file)" in err
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["train"]["semi_supervised"] is True
