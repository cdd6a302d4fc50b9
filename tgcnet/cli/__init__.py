"""``tgcnet train | evaluate | predict | demo | params | prompts | serve | export`` (also ``python -m tgcnet.cli``).

Multi-GPU training: ``torchrun --nproc_per_node=K -m tgcnet.cli train ...``.
One module per command; each has ``add_parser(subparsers)`` and sets ``func`` to the function
that runs it and returns an exit code. Building the parser imports neither torch nor the
model, so ``tgcnet --help`` and ``tgcnet prompts ...`` start fast; commands import what they
need when they run.

Exit codes: 0 success; 2 an error the user must fix (bad option, missing file, damaged
input), reported as one line ``tgcnet <command>: error: ...`` without a traceback; 1 a
failure where rerunning may help (see :class:`CommandError`).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from . import demo, evaluate, export, params, predict, prompts, serve, train
from .common import CommandError

__all__ = ["build_parser", "main", "CommandError"]

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

_COMMANDS = (train, evaluate, predict, demo, params, prompts, serve, export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tgcnet", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns its exit code (argparse's own usage errors exit 2 as well)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, CommandError) as exc:
        # the message says what to fix: one line, no traceback
        print(f"tgcnet {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, CommandError) else 2
