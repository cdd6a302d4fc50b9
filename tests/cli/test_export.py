"""``tgcnet export``: writes a checked ONNX file and says how to run it; every user error is one line, exit 2."""
from __future__ import annotations

import pytest
import torch

from tgcnet import create_model
from tgcnet.cli import main
from tgcnet.data import sample_root
from tgcnet.io import save_json_atomic

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

PROMPTS = str(sample_root() / "test" / "prompts.csv")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as the trainer leaves it (best/ + train_config.json), tiny preset, 64 px."""
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    create_model("tgcnet-tiny", knowledge=None).save_pretrained(run / "best")
    save_json_atomic({"train": {"image_size": 64, "knowledge": "none", "threshold": 0.5}}, run / "train_config.json")
    return run


def _one_line_error(capsys, message: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith("tgcnet export: error: "), err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err


def test_export_writes_the_file_and_says_how_to_run_it(run_dir, tmp_path, capsys):
    from tgcnet.onnx_export import read_onnx_captions

    out = tmp_path / "deploy" / "m.onnx"
    assert main(["export", "--checkpoint", str(run_dir), "--out", str(out), "--captions", PROMPTS,
                 "--caption", "Lower Left lung"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and str(out) in printed and "opset 20" in printed and "InferenceSession" in printed
    assert "[torch.onnx]" not in printed, "the exporter's own progress lines stay out of the summary"
    assert read_onnx_captions(out)[-1] == "lower left lung."


@pytest.mark.parametrize("args,message", [
    (["--captions", "PROMPTS"], "checkpoint"),                                    # checkpoint is missing
    ([], "pass --captions FILE"),
    (["--caption", "lower left lung", "--caption", ""], "empty caption(s): --caption 2"),
    (["--caption", " ".join(["lower left lung"] * 40)], "longer than the 75 tokens"),
    (["--captions", "nope.txt"], "captions file not found: nope.txt"),
    (["--caption", "lung", "--opset", "9"], "--opset 9"),
    (["--caption", "lung", "--image-size", "70"], "--image-size 70"),
])
def test_user_errors_are_one_line(args, message, run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = str(tmp_path / "no_run") if args[:2] == ["--captions", "PROMPTS"] else str(run_dir)
    args = [PROMPTS if a == "PROMPTS" else a for a in args]
    assert main(["export", "--checkpoint", checkpoint, "--out", "m.onnx", *args]) == 2
    _one_line_error(capsys, message)
    assert not (tmp_path / "m.onnx").exists()


def test_out_whose_folder_cannot_be_created(run_dir, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("a file", encoding="utf-8")
    assert main(["export", "--checkpoint", str(run_dir), "--out", str(blocker / "m.onnx"), "--caption", "lung"]) == 2
    _one_line_error(capsys, f"{blocker} is a file, not a folder")


def test_unknown_format_is_a_usage_error(run_dir, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(run_dir), "--out", str(tmp_path / "m"), "--format", "tflite"]) == 2
    err = capsys.readouterr().err
    assert "--format: invalid choice: 'tflite'" in err and "onnx" in err


def test_missing_extra_names_the_pip_command(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    assert main(["export", "--checkpoint", str(run_dir), "--out", str(tmp_path / "m.onnx"), "--caption", "lung"]) == 2
    _one_line_error(capsys, 'pip install "tgcnet[export]"')
