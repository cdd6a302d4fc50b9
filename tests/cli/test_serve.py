"""``tgcnet serve``: user errors are one line and exit 2 before any server starts."""
from __future__ import annotations

import sys

import pytest
from helpers import make_run_dir

from tgcnet.cli import main


@pytest.fixture
def no_launch(monkeypatch):
    """Fails the test if a server would start."""
    gr = pytest.importorskip("gradio", reason='the web page needs gradio: pip install "tgcnet[serve]"')

    def launch(self, **kwargs):
        raise AssertionError("a server started")
    monkeypatch.setattr(gr.Blocks, "launch", launch)


def _one_line_error(capsys, message: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith("tgcnet serve: error: ") and message in err, err
    assert "Traceback" not in err and err.count("\n") == 1, err


@pytest.mark.parametrize("where", ["bare", "path"])
def test_a_missing_checkpoint_fails_before_a_server_starts(tmp_path, capsys, no_launch, monkeypatch, where):
    monkeypatch.chdir(tmp_path)   # a bare name is also a Hub id: offline (conftest), it is not fetched
    checkpoint = "missing" if where == "bare" else str(tmp_path / "missing")
    assert main(["serve", "--checkpoint", checkpoint]) == 2
    _one_line_error(capsys, "not found")


def test_a_zero_upload_cap_is_refused(tmp_path, capsys, no_launch):
    assert main(["serve", "--checkpoint", str(tmp_path / "missing"), "--max-upload-mb", "0"]) == 2
    _one_line_error(capsys, "--max-upload-mb must be a positive number")


def test_without_gradio_the_error_names_the_extra(tmp_path, capsys, monkeypatch):
    run = make_run_dir(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "gradio", None)   # import gradio raises ImportError
    assert main(["serve", "--checkpoint", str(run)]) == 2
    _one_line_error(capsys, 'pip install "tgcnet[serve]"')
