"""Every command reports a user error as one line ``tgcnet <command>: error: ...`` and exits 2."""
from __future__ import annotations

import pytest

from tgcnet.cli import main
from tgcnet.data import sample_root

SAMPLE = str(sample_root())


def _one_line_error(capsys, command: str, message: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith(f"tgcnet {command}: error: "), err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv,message", [
    (["train", "--data", SAMPLE, "--out", "run", "--epochs", "0"], "epochs=0"),
    (["evaluate", "--checkpoint", "run", "--data", SAMPLE, "--threads", "0"], "--threads must be >= 1"),
    (["predict", "--checkpoint", "run", "--out", "p", "--image", "a.png"], "empty text prompt"),
    (["params", "no-such-preset"], "unknown preset 'no-such-preset'"),
    (["prompts", "show", "missing.json"], "missing.json: file not found"),
    (["prompts", "generate", "--captions", "nope.csv", "--model", "m", "--out", "c.json"], "nope.csv"),
])
def test_user_error_exits_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    _one_line_error(capsys, argv[0], message)


def test_demo_refuses_to_overwrite_without_force(capsys, tmp_path):
    (tmp_path / "demo" / "run").mkdir(parents=True)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--device", "cpu"]) == 2
    _one_line_error(capsys, "demo", "pass --force")


@pytest.mark.parametrize("argv", [["train", "--no-such-option"], ["evaluate", "--data", "x"], ["frobnicate"]])
def test_usage_errors_exit_2_through_main(argv, capsys):
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "predict", "demo", "params", "prompts"):
        assert command in out


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
