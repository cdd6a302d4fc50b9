"""prompts/ must stay importable without the model: DATE imports prompts, never the reverse."""
from __future__ import annotations

import ast
from pathlib import Path

import tgcnet.prompts

PKG = Path(tgcnet.prompts.__file__).parent
#: torch-free foundation modules of tgcnet that prompts/ may use (checked below to stay so)
ALLOWED = ("tgcnet.io",)


def test_prompts_imports_nothing_from_the_model_side():
    offenders = []
    for path in sorted(PKG.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module in ALLOWED and node.level == 0:
                continue
            if isinstance(node, ast.ImportFrom) and (node.level > 1 or (node.module or "").startswith("tgcnet")):
                offenders.append(f"{path.name}:{node.lineno} from {'.' * node.level}{node.module or ''}")
            elif isinstance(node, ast.Import):
                offenders += [f"{path.name}:{node.lineno} import {a.name}" for a in node.names
                              if a.name.split(".")[0] in ("tgcnet", "prompts", "torch")]
    assert not offenders, offenders


def test_allowed_modules_import_no_tgcnet_and_no_torch_at_load():
    """What prompts/ may import from tgcnet must itself stay below the model (top-level imports only)."""
    import importlib

    for name in ALLOWED:
        path = Path(importlib.import_module(name).__file__)
        tree = ast.parse(path.read_text(), str(path))
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        modules = [(n.module or "") if isinstance(n, ast.ImportFrom) else a.name
                   for n in top for a in (n.names if isinstance(n, ast.Import) else [None])]
        assert not [m for m in modules if m.split(".")[0] in ("tgcnet", "torch", "open_clip", "peft", "timm")], \
            (name, modules)


def test_package_exports():
    for name in ("extract_concepts", "KnowledgeBank", "load_default_bank", "KnowledgeCache", "load_cache",
                 "save_cache", "generate_cache", "CacheError", "SCHEMA_VERSION"):
        assert name in tgcnet.prompts.__all__ and hasattr(tgcnet.prompts, name), name
