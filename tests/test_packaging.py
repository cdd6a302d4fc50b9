"""adapters/ and prompts/ install under the tgcnet namespace, never as top-level modules."""
import os
import subprocess
import sys
from pathlib import Path

import tgcnet
import tgcnet.adapters
import tgcnet.prompts

REPO = Path(__file__).resolve().parents[1]


def test_namespaced_packages_come_from_the_top_level_folders():
    assert Path(tgcnet.adapters.__file__).resolve().parent.name == "adapters"
    assert Path(tgcnet.prompts.__file__).resolve().parent.name == "prompts"


def test_installation_adds_no_top_level_adapters_or_prompts(tmp_path):
    """Run outside the repository (whose root is on sys.path when pytest runs from it)."""
    code = ("import importlib.util, sys, tgcnet.adapters, tgcnet.prompts; "
            "print([n for n in ('adapters', 'prompts') if (s := importlib.util.find_spec(n)) is not None "
            f"and s.origin and s.origin.startswith({str(REPO)!r})])")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_presets_ship_as_package_data():
    presets = Path(tgcnet.__file__).parent / "model_configs"
    assert {p.stem for p in presets.glob("*.json")} >= {"tgcnet-tiny", "tgcnet-vit-b16"}
