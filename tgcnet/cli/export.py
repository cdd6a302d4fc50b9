"""``tgcnet export``: a trained model as one ONNX file, for serving without Python or torch."""
from __future__ import annotations

import argparse

from .common import CommandError

__all__ = ["add_parser", "run"]

FORMATS = ("onnx",)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="write a trained model as an ONNX file (images + caption index -> logits)")
    p.add_argument("--checkpoint", required=True, help="run directory (uses best/) or a saved model directory")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--captions", default=None,
                   help="the captions the file will answer: a text file (one per line) or a CSV/Excel table "
                   "with a Description column; their text features are computed now and stored in the file")
    p.add_argument("--caption", action="append", default=None, metavar="TEXT",
                   help="one caption to store (repeatable; added after --captions)")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the run's)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset, 18 to 23 (default: 20, the one tested)")
    p.add_argument("--knowledge", default=None)
    p.add_argument("--pretrained", default=None)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from tgcnet.onnx_export import export_onnx

    try:
        result = export_onnx(args.checkpoint, args.out, captions_file=args.captions, captions=args.caption,
                             image_size=args.image_size, opset=args.opset, knowledge=args.knowledge,
                             pretrained=args.pretrained)
    except ImportError as exc:
        if "tgcnet[export]" not in str(exc):
            raise
        raise CommandError(str(exc)) from exc   # the optional extra is missing: one line naming the pip command
    print(result.summary())
    return 0
