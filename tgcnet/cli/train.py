"""``tgcnet train``: its options are generated from the fields of ``TrainConfig``.

Each field's metadata (see tgcnet.engine.train_config) gives the option's help, section,
flag and choices, so a setting, its default and its help text are written once. Options
are parsed with ``argument_default=SUPPRESS``: an option left out stays out of the
namespace, so ``--resume`` can tell what the user changed from what was saved, and
``--recipe NAME`` what the user set over the recipe (options given win over the recipe,
the recipe over the defaults; ``--recipe list`` describes the shipped recipes).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from typing import Any, Union

from tgcnet.engine.train_config import GROUPS, TrainConfig, parse_overrides, read_saved_config

__all__ = ["add_parser", "run", "train_config_from_args", "option_name"]

_DESCRIPTION = ("Fine-tune a TGCNet preset. Writes RUN_DIR/{train_config.json,log.jsonl,best/,last/}. "
                "Multi-GPU: torchrun --nproc_per_node=K -m tgcnet.cli train ... (--batch-size is per process). "
                "A published protocol: --recipe NAME (--recipe list names them); options given win over it.")


def option_name(f: dataclasses.Field) -> str:
    """The flag of a TrainConfig field: its ``flag`` metadata, else ``--`` + the name with dashes."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _value_type(annotation: Any) -> Any:
    """``int`` of ``Optional[int]``; argparse converts strings with it."""
    if typing.get_origin(annotation) is Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _add_field(group: argparse._ArgumentGroup, f: dataclasses.Field, annotation: Any) -> None:
    meta = f.metadata
    kwargs: dict[str, Any] = {"dest": f.name}
    help_text = meta["help"]
    if "{default}" in help_text:
        help_text = help_text.replace("{default}", str(f.default))
    kwargs["help"] = help_text.replace("%", "%%")
    for key in ("choices", "metavar", "action"):
        if key in meta:
            kwargs[key] = meta[key]
    value_type = _value_type(annotation)
    if value_type is bool and "action" not in kwargs:
        kwargs["action"] = "store_true"
    elif kwargs.get("action") not in ("store_true", "store_false") and value_type in (int, float):
        kwargs["type"] = value_type
    group.add_argument(option_name(f), **kwargs)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="fine-tune a preset on a text-annotated segmentation data set",
                       description=_DESCRIPTION, argument_default=argparse.SUPPRESS)
    groups = {name: p.add_argument_group(name, description) for name, description in GROUPS.items()}
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        group = f.metadata.get("group")
        if group not in groups:
            raise TypeError(f"TrainConfig.{f.name}: metadata group {group!r} is not one of {list(groups)}")
        _add_field(groups[group], f, hints[f.name])
    p.set_defaults(func=run)
    return p


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed args; with --resume, the saved config updated by the options given;
    with --recipe, the recipe's settings updated by the options given."""
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    if "model_overrides" in given:
        given["model_overrides"] = parse_overrides(given["model_overrides"])
    if given.get("val_split", "").lower() == "none":
        given["val_split"] = None
    if given.get("clip_grad") == 0:
        given["clip_grad"] = None
    recipe = given.pop("recipe", None)
    if recipe is not None:
        from tgcnet.recipes import recipe_path

        recipe_path(recipe)  # an unknown name fails first, listing the shipped ones
    if "resume" in given:
        if recipe is not None:
            raise ValueError("--recipe starts a new run; --resume continues one with its saved settings, which "
                             "already hold its recipe's values: drop --recipe")
        base = read_saved_config(given["resume"])
        base.update(given)
        base["out"] = given["resume"]
        return TrainConfig.from_dict(base)
    if "data" not in given:
        raise ValueError("--data DIR is required (or --resume RUN_DIR)")
    if recipe is not None:
        return TrainConfig.from_recipe(recipe, **given)
    return TrainConfig.from_dict(given)


def _recipe_notes(config: TrainConfig, args: argparse.Namespace) -> list[str]:
    """What a recipe run should know before it starts (printed by rank 0 only)."""
    if config.recipe is None or int(os.environ.get("RANK", "0")) != 0:
        return []
    notes = []
    if config.pretrained is None:
        notes.append(f"recipe {config.recipe}: no --pretrained CKPT, so the frozen CLIP is randomly initialised; "
                     "the published protocol fine-tunes on a pretrained CLIP (README: Bring your CLIP)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not hasattr(args, "batch_size"):
        per, rest = divmod(config.batch_size, world)
        keep = (f"pass --batch-size {per} to keep the recipe's global batch of {config.batch_size}" if per and not rest
                else f"{config.batch_size} does not split evenly over {world} processes: choose --batch-size near "
                     f"{config.batch_size / world:g}")
        notes.append(f"recipe {config.recipe}: --batch-size is per process, so {world} processes x "
                     f"{config.batch_size} make a global batch of {world * config.batch_size}; {keep}")
    return notes


def _check_recipe_layout(config: TrainConfig, args: argparse.Namespace) -> None:
    """A recipe's splits are a release's (LViT's): data in another layout is refused unless --layout says so."""
    if config.recipe is None or config.layout is None or config.resume is not None or hasattr(args, "layout"):
        return
    from tgcnet.data.readers import detect_layout

    try:
        found = detect_layout(config.data)
    except (ValueError, FileNotFoundError):
        return  # reported with its reason when the split is read
    if found != config.layout:
        raise ValueError(f"recipe {config.recipe} trains on the {config.layout!r} release of its data set (its "
                         f"train/val/test partition), but {config.data} is in the {found!r} layout: point --data "
                         f"at that release, or pass --layout {found} to train on these splits anyway")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "recipe", None) == "list":
        from tgcnet.recipes import describe_recipes

        print(describe_recipes())
        return 0
    config = train_config_from_args(args)
    _check_recipe_layout(config, args)
    for note in _recipe_notes(config, args):
        print(f"note: {note}", file=sys.stderr, flush=True)
    from tgcnet.engine.trainer import train

    run_dir = train(config)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(f"run directory: {run_dir}")
    if config.recipe is not None:
        layout = f" --layout {config.layout}" if config.layout else ""
        print(f"recipe {config.recipe}: evaluate once on the test split (per-image and pooled Dice): "
              f"tgcnet evaluate --checkpoint {run_dir} --data {config.data}{layout} --split test")
    return 0
