"""``import tgcnet``, ``import tgcnet.prompts``, ``tgcnet --help`` and ``tgcnet prompts`` load no torch."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

import tgcnet
import tgcnet.prompts

HEAVY = ("torch", "open_clip", "peft", "timm")
PKG = Path(tgcnet.__file__).parent
BANK = str(resources.files("tgcnet.prompts") / "default_bank.json")


def _loaded_after(code: str) -> list[str]:
    """The heavy modules in sys.modules after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("code", [
    "import tgcnet",
    "import tgcnet.prompts",
    "from tgcnet.prompts import extract_concepts, load_default_bank; load_default_bank()",
    "from tgcnet.engine import TrainConfig",
    "from tgcnet.cli import build_parser; build_parser()",
    "from tgcnet.cli import main; main(['--help'])",
    "from tgcnet.cli import main; main(['train', '--help'])",
    f"from tgcnet.cli import main; main(['prompts', 'show', {BANK!r}])",
])
def test_light_paths_import_no_torch(code):
    assert _loaded_after(code) == []


def test_lazy_names_resolve_and_are_listed():
    assert tgcnet.__all__ and all(hasattr(tgcnet, name) for name in tgcnet.__all__)
    assert set(tgcnet.__all__) <= set(dir(tgcnet))
    from tgcnet.model import TGCNet

    assert tgcnet.TGCNet is TGCNet
    with pytest.raises(AttributeError, match="no_such_name"):
        tgcnet.no_such_name  # noqa: B018


def test_engine_names_resolve():
    import tgcnet.engine as engine

    assert all(hasattr(engine, name) for name in engine.__all__)
    assert callable(engine.train) and callable(engine.evaluate) and callable(engine.predict)


def test_nothing_below_the_cli_imports_it():
    """The CLI sits on top: neither the engine nor tgcnet.prompts may import tgcnet.cli."""
    offenders = []
    for folder in (PKG / "engine", Path(tgcnet.prompts.__file__).parent):
        for path in sorted(folder.glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                         [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                offenders += [f"{path.name}:{node.lineno}" for n in names if n.startswith("tgcnet.cli")]
                if isinstance(node, ast.ImportFrom) and node.level >= 2 and (node.module or "").startswith("cli"):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders


def test_engine_modules_do_not_shadow_their_functions():
    import tgcnet.engine as engine

    modules = {p.stem for p in (PKG / "engine").glob("*.py")}
    assert not modules & set(engine.__all__), modules & set(engine.__all__)

