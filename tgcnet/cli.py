"""``tgcnet train | evaluate | predict | params | prompts`` (also ``python -m tgcnet.cli``)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _cmd_params(args: argparse.Namespace) -> int:
    from tgcnet import count_parameters, create_model, format_parameter_table

    # as shipped, knowledge bank on: its fusion module is part of what trains
    model = create_model(args.preset, pretrained=args.pretrained, clip_model=args.clip_model)
    rows = count_parameters(model)
    if args.json:
        print(json.dumps({"preset": args.preset, "rows": rows}, indent=2))
    else:
        print(format_parameter_table(rows, title=f"Parameters of {args.preset}"), end="")
    return 0


def _add_params_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("params", help="per-module trainable / total parameter table of a preset")
    p.add_argument("preset", help="preset name (see `tgcnet params --list`)", nargs="?", default="tgcnet-vit-b16")
    p.add_argument("--pretrained", default=None, help="local open_clip checkpoint for the CLIP towers")
    p.add_argument("--clip-model", default=None, help="any open_clip model name, hf-hub: id or local-dir: folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_params)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tgcnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_params_parser(sub)
    _add_optional_parsers(sub)
    return parser


def _add_optional_parsers(sub: argparse._SubParsersAction) -> None:
    """Subcommands living in other packages register themselves here."""
    from tgcnet.engine.cli import add_engine_parsers
    from tgcnet.prompts.cli import add_prompts_parser

    add_engine_parsers(sub)
    add_prompts_parser(sub)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        # bad input is the user's to fix: one clear line, no traceback
        print(f"tgcnet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
