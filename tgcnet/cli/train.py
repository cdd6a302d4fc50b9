"""``tgcnet train``: its options are generated from the fields of ``TrainConfig``.

Each field's metadata (see tgcnet.engine.train_config) gives the option's help, section,
flag and choices, so a setting, its default and its help text are written once. Options
are parsed with ``argument_default=SUPPRESS``: an option left out stays out of the
namespace, so ``--resume`` can tell what the user changed from what was saved.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Union

from tgcnet.engine.train_config import GROUPS, TrainConfig, parse_overrides, read_saved_config

__all__ = ["add_parser", "run", "train_config_from_args", "option_name"]

_DESCRIPTION = ("Fine-tune a TGCNet preset. Writes RUN_DIR/{train_config.json,log.jsonl,best/,last/}. "
                "Multi-GPU: torchrun --nproc_per_node=K -m tgcnet.cli train ...")


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
    """TrainConfig from parsed args; with --resume, the saved config updated by the options given."""
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    if "model_overrides" in given:
        given["model_overrides"] = parse_overrides(given["model_overrides"])
    if given.get("val_split", "").lower() == "none":
        given["val_split"] = None
    if given.get("clip_grad") == 0:
        given["clip_grad"] = None
    if "resume" in given:
        base = read_saved_config(given["resume"])
        base.update(given)
        base["out"] = given["resume"]
        return TrainConfig.from_dict(base)
    if "data" not in given:
        raise ValueError("--data DIR is required (or --resume RUN_DIR)")
    return TrainConfig.from_dict(given)


def run(args: argparse.Namespace) -> int:
    from tgcnet.engine.trainer import train

    run_dir = train(train_config_from_args(args))
    print(f"run directory: {run_dir}")
    return 0
