"""``tgcnet serve``: a web page to try a trained model in a browser (Gradio, loopback by default)."""
from __future__ import annotations

import argparse

from tgcnet.tta import TTA_MODES

from .common import CommandError, set_threads

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="a web page to try a trained model: upload an image, type a caption")
    p.add_argument("--checkpoint", required=True, help="run directory (uses best/) or a saved model directory")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default loopback; 0.0.0.0 exposes the page to the network)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload accepted (default 50 MB)")
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", choices=TTA_MODES, default="none")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; the checkpoint is loaded first, so a bad one fails before a port opens."""
    from tgcnet.serve import _require_gradio, serve

    set_threads(args.threads)
    try:
        _require_gradio()
    except ImportError as exc:
        raise CommandError(str(exc)) from exc   # the serve extra is missing: one line naming the pip command
    serve(args.checkpoint, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
          device=args.device, tta=args.tta)
    return 0
