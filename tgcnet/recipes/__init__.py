"""Training recipes: published protocols as ``TrainConfig`` values, one JSON file each.

    tgcnet train --recipe qata-cov19 --data DIR --pretrained CKPT --out RUN_DIR
    tgcnet train --recipe list

    from tgcnet.engine import TrainConfig
    cfg = TrainConfig.from_recipe("qata-cov19", data="DIR", pretrained="CKPT", preset="tgcnet-biomedclip")

A recipe file (``<name>.json`` beside this module) holds, besides notes for people
(``summary``, ``dataset``, ``presets``, ``pretrained``, ``batch_size``, ``evaluate``,
``resources``, ``published``), a ``train`` object of field groups::

    "train": {"optimiser": {"values": {"lr": 0.0003, ...}, "source": "where these come from"}, ...}

Every key of ``values`` is a ``TrainConfig`` field (``TrainConfig.from_recipe`` checks the names:
this module reads JSON and knows no settings), each field appears in one group only,
and every group says in ``source`` where its values come from or that they are our
choice. ``data``, ``out``, ``resume``, ``pretrained``, ``init_from`` and ``recipe`` are
the user's and never come from a recipe. Values given explicitly (keyword arguments of
``TrainConfig.from_recipe``, options of ``tgcnet train``) win over the recipe's, which
win over ``TrainConfig``'s defaults.

``batch_size`` is per process, as everywhere in tgcnet (see ``batch_size`` in each file).
This module reads JSON only: no torch, so ``tgcnet train --recipe list`` starts fast.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["RECIPE_DIR", "RESERVED", "list_recipes", "recipe_path", "load_recipe", "recipe_values",
           "describe_recipes"]

RECIPE_DIR = Path(__file__).parent
#: TrainConfig fields a recipe must not set: they name the user's files and runs
RESERVED = ("data", "out", "resume", "pretrained", "init_from", "recipe")
_NOTES = ("summary", "dataset", "presets", "pretrained", "batch_size", "evaluate", "resources", "published")


def list_recipes() -> list[str]:
    """Names of the shipped recipes, sorted."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def recipe_path(name: str) -> Path:
    """The file of recipe ``name``; an unknown name is a ValueError listing the known ones."""
    names = list_recipes()
    if name not in names:
        raise ValueError(f"unknown recipe {name!r}; shipped recipes: {', '.join(names)} "
                         "(tgcnet train --recipe list describes them)")
    return RECIPE_DIR / f"{name}.json"


def _check(recipe: Any, path: Path) -> dict[str, Any]:
    """The recipe document, or a ValueError naming the file and everything wrong with it."""
    problems: list[str] = []
    if not isinstance(recipe, dict) or not isinstance(recipe.get("train"), dict) or not recipe["train"]:
        raise ValueError(f"recipe {path} must be a JSON object with a non-empty 'train' object of field groups")
    if recipe.get("name") != path.stem:
        problems.append(f"'name' is {recipe.get('name')!r}, not the file's name {path.stem!r}")
    missing = [k for k in _NOTES if k not in recipe]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    seen: dict[str, str] = {}
    for group, body in recipe["train"].items():
        if not isinstance(body, dict) or not isinstance(body.get("values"), dict) or not body["values"]:
            problems.append(f"group {group!r} needs a non-empty 'values' object")
            continue
        if not isinstance(body.get("source"), str) or not body["source"].strip():
            problems.append(f"group {group!r} needs a 'source' saying where its values come from")
        for key in body["values"]:
            if key in RESERVED:
                problems.append(f"group {group!r}: {key!r} is the user's to give, not a recipe's")
            elif key in seen:
                problems.append(f"{key!r} is set in groups {seen[key]!r} and {group!r}")
            seen[key] = group
    if problems:
        raise ValueError(f"recipe {path}: " + "; ".join(problems))
    return recipe


def load_recipe(name: str) -> dict[str, Any]:
    """The whole recipe document of ``name`` (values, sources and notes), checked."""
    path = recipe_path(name)
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"recipe {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    return _check(recipe, path)


def recipe_values(name: str) -> dict[str, Any]:
    """The TrainConfig values of recipe ``name``, its groups flattened: ``{"lr": 0.0003, ...}``."""
    values: dict[str, Any] = {}
    for body in load_recipe(name)["train"].values():
        values.update(body["values"])
    return values


def describe_recipes() -> str:
    """What ``tgcnet train --recipe list`` prints: each recipe, its values and how to run it."""
    blocks = []
    for name in list_recipes():
        recipe = load_recipe(name)
        values = ", ".join(f"{k}={json.dumps(v)}" for k, v in recipe_values(name).items())
        blocks.append("\n".join([
            f"{name}: {recipe['summary']}",
            f"  values: {values}",
            f"  presets: {', '.join(recipe['presets'])} (--preset; default {recipe_values(name).get('preset')})",
            f"  batch size: {recipe['batch_size']}",
            f"  then: {recipe['evaluate']['command']}",
            f"  GPU time: {recipe['resources']['gpu_time']}; GPU memory: {recipe['resources']['gpu_memory']}",
            f"  sources: {recipe_path(name)}",
        ]))
    usage = ("usage: tgcnet train --recipe NAME --data DIR --pretrained CKPT --out RUN_DIR [any option, which "
             "wins over the recipe]")
    return "\n\n".join(blocks + [usage])
