"""``tgcnet params``: per-module trainable / total parameter table of a preset."""
from __future__ import annotations

import argparse
import json

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("params", help="per-module trainable / total parameter table of a preset")
    p.add_argument("preset", help="preset name (see `tgcnet params --list`)", nargs="?", default="tgcnet-vit-b16")
    p.add_argument("--pretrained", default=None, help="local open_clip checkpoint for the CLIP towers")
    p.add_argument("--clip-model", default=None, help="any open_clip model name, hf-hub: id or local-dir: folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from tgcnet.factory import create_model
    from tgcnet.params import count_parameters, format_parameter_table

    # as shipped, knowledge bank on: its fusion module is part of what trains
    model = create_model(args.preset, pretrained=args.pretrained, clip_model=args.clip_model)
    rows = count_parameters(model)
    if args.json:
        print(json.dumps({"preset": args.preset, "rows": rows}, indent=2))
    else:
        print(format_parameter_table(rows, title=f"Parameters of {args.preset}"), end="")
    return 0
