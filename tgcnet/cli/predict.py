"""``tgcnet predict``: segment images (PNG, JPEG, TIFF or DICOM) from a text prompt; writes masks and overlays."""
from __future__ import annotations

import argparse

from tgcnet.tta import TTA_MODES

from .common import set_threads

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="segment images from a text prompt; writes mask and overlay PNGs")
    p.add_argument("--checkpoint", required=True, help="run directory (uses best/) or a saved model directory")
    p.add_argument("--out", required=True, help="output folder")
    one = p.add_argument_group("one image")
    one.add_argument("--image", default=None)
    one.add_argument("--text", default=None, help="what to segment, e.g. 'lower left lung infection.'")
    one.add_argument("--mask", default=None, help="ground-truth mask, drawn in green")
    many = p.add_argument_group("a folder")
    many.add_argument("--images", default=None, help="folder of images")
    many.add_argument("--captions", default=None, help="CSV with columns Image, Description")
    many.add_argument("--masks", default=None, help="folder of ground-truth masks (mask_<image> or <image>)")
    p.add_argument("--format", dest="output_format", choices=("png", "dicom-seg"), default="png",
                   help="mask output: png (0/255), or dicom-seg: a DICOM Segmentation referencing each DICOM input, "
                   "for viewers and PACS (needs tgcnet[dicom])")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--knowledge", default=None)
    p.add_argument("--pretrained", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", choices=TTA_MODES, default="none",
                   help="test-time augmentation: flip also segments the mirrored image with 'left' and 'right' "
                   "swapped in its caption and averages the two (twice the compute)")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from tgcnet.engine.prediction import predict

    set_threads(args.threads)
    rows = predict(args.checkpoint, args.out, image=args.image, text=args.text, mask=args.mask, images=args.images,
                   captions=args.captions, masks=args.masks, device=args.device, image_size=args.image_size,
                   threshold=args.threshold, knowledge=args.knowledge, pretrained=args.pretrained,
                   tta=args.tta, output_format=args.output_format)
    for r in rows:
        extra = f" Dice {r['dice']:.4f}" if "dice" in r else ""
        where = r["location"] or "no location words"
        print(f"{r['name']}: foreground {100 * r['foreground']:.1f}%{extra} [read as: {where}] -> {r['mask']}, "
              f"{r['overlay']}")
    return 0
