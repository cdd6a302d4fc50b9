"""``tgcnet params``: the per-module table, its JSON, and clear errors."""
from __future__ import annotations

import json

from tgcnet.cli import main


def test_params_table(capsys):
    assert main(["params", "tgcnet-tiny"]) == 0
    out = capsys.readouterr().out
    assert "| date.lora |" in out and "| sse.clip_visual | 0 |" in out and "| total |" in out


def test_params_json(capsys):
    assert main(["params", "tgcnet-tiny", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[-1]["module"] == "total" and rows[-1]["trainable"] > 0


def test_unknown_preset_is_one_clear_line(capsys):
    assert main(["params", "no-such-preset"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tgcnet params: error: unknown preset 'no-such-preset'") and "Traceback" not in err


def test_missing_checkpoint_is_one_clear_line(capsys, tmp_path):
    assert main(["params", "tgcnet-tiny", "--pretrained", str(tmp_path / "x.safetensors")]) == 2
    assert "CLIP checkpoint not found" in capsys.readouterr().err
