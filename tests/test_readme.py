"""The README's code is what a newcomer runs first: its Python block runs, its commands parse."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from helpers import dicom_xray, make_run_dir

from tgcnet.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")
TEST_COMMAND = '.venv/bin/pip install -q -e ".[test]" && .venv/bin/python -m pytest -q'


def _commands() -> list[str]:
    """Every `tgcnet ...` line of the README's indented command blocks, comments dropped."""
    lines = [line.strip() for line in TEXT.splitlines() if line.startswith("    ")]
    commands = []
    for line in lines:
        for part in line.split("&&"):
            part = part.split("  #")[0].strip()
            match = re.search(r"(?:^|/)tgcnet (.*)$", part)
            if match and not part.startswith(("python", "pip")):
                commands.append(match.group(1))
    return commands


def test_the_readme_is_a_front_page():
    assert len(TEXT.splitlines()) <= 160


def test_the_two_commands_are_there_and_ci_runs_the_test_command():
    assert "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt -e . && .venv/bin/tgcnet demo" in TEXT
    assert TEST_COMMAND in TEXT
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert TEST_COMMAND in ci


@pytest.mark.parametrize("command", _commands())
def test_every_command_parses(command):
    args = build_parser().parse_args(shlex.split(command))
    assert callable(args.func)


def test_there_are_commands_for_every_use():
    used = {command.split()[0] for command in _commands()}
    assert {"demo", "train", "evaluate", "predict", "serve", "export", "params"} <= used


def test_the_python_block_runs_on_a_tiny_preset(tmp_path, monkeypatch):
    """The block as written, with the tiny preset for ViT-B/16 and a trained run and DICOM where it names them."""
    pytest.importorskip("highdicom")
    from tgcnet.data import sample_root
    from tgcnet.data.dataset import load_image

    block = re.search(r"```python\n(.*?)```", TEXT, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    make_run_dir(tmp_path / "runs" / "demo" / "run")
    image = sorted((sample_root() / "test" / "images").iterdir())[0]
    dicom_xray(load_image(image)).save_as(tmp_path / "chest.dcm", enforce_file_format=True)
    namespace: dict = {}
    exec(compile(block.replace('"tgcnet-vit-b16"', '"tgcnet-tiny"'), str(README), "exec"), namespace)
    result = namespace["result"]
    assert result.mask.shape == load_image(image).shape[:2]
    assert result.location.phrases == ("lower left lung",)
    assert (tmp_path / "chest_seg.dcm").is_file() and (tmp_path / "out" / "model" / "config.json").is_file()
    assert tuple(namespace["logits"].shape) == (2, 1, 224, 224)
