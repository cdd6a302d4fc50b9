"""``tgcnet`` as a module: ``python -m tgcnet.cli`` runs commands and lists them all."""
from __future__ import annotations

import os
import subprocess
import sys


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "tgcnet.cli", "params", "tgcnet-tiny"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| decoder |" in result.stdout


def test_module_entry_point_lists_engine_commands():
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1")
    res = subprocess.run([sys.executable, "-m", "tgcnet.cli", "--help"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0
    for command in ("train", "evaluate", "predict", "demo"):
        assert command in res.stdout
