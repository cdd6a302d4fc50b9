"""``tgcnet evaluate``: per-image and pooled Dice/IoU of a trained model on a split."""
from __future__ import annotations

import argparse
from pathlib import Path

from tgcnet.tta import TTA_MODES

from .common import format_metrics, set_threads

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="per-image and pooled Dice/IoU of a trained model on a split")
    p.add_argument("--checkpoint", required=True, help="run directory (uses best/) or a saved model directory")
    p.add_argument("--data", required=True, help="data set folder")
    p.add_argument("--split", default="test", help="train, valid or test (default test)")
    p.add_argument("--layout", default=None)
    p.add_argument("--out", default=None, help="where metrics.json and per_image.csv go "
                   "(default CHECKPOINT/eval_SPLIT)")
    p.add_argument("--image-size", type=int, default=None, help="default: the training size")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--knowledge", default=None, help="default: what the model was trained with")
    p.add_argument("--pretrained", default=None, help="CLIP checkpoint, if it moved since training")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--tta", choices=TTA_MODES, default="none",
                   help="test-time augmentation: flip also segments the mirrored image with 'left' and 'right' "
                   "swapped in its caption and averages the two (twice the compute)")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from tgcnet.engine.evaluation import evaluate
    from tgcnet.engine.files import METRICS_NAME, PER_IMAGE_NAME

    set_threads(args.threads)
    out = Path(args.out) if args.out else Path(args.checkpoint) / f"eval_{args.split}"
    m = evaluate(args.checkpoint, args.data, args.split, out=out, layout=args.layout, image_size=args.image_size,
                 batch_size=args.batch_size, device=args.device, amp=args.amp, threshold=args.threshold,
                 knowledge=args.knowledge, pretrained=args.pretrained, skip_bad=args.skip_bad, workers=args.workers,
                 tta=args.tta)
    print(format_metrics(m))
    print(f"wrote {out / METRICS_NAME} and {out / PER_IMAGE_NAME}")
    return 0
