"""``tgcnet train | evaluate | predict | demo``, registered into tgcnet.cli's parser.

Also the torchrun entry: ``torchrun --nproc_per_node=K -m tgcnet.cli train ...``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_engine_parsers", "run_demo"]

S = argparse.SUPPRESS  # train options left out stay out, so --resume can tell what was changed


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune a preset on a text-annotated segmentation data set",
                       description="Fine-tune a TGCNet preset. Writes RUN_DIR/{train_config.json,log.jsonl,best/,last/}. "
                                   "Multi-GPU: torchrun --nproc_per_node=K -m tgcnet.cli train ...",
                       argument_default=S)
    g = p.add_argument_group("data and run")
    g.add_argument("--data", help="data set folder (simple, LViT, GuideDecoder or SGSeg layout, detected)")
    g.add_argument("--layout", help="force a layout instead of detecting it")
    g.add_argument("--out", help="run directory to create (default runs/tgcnet)")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run; other options default to "
                   "the saved ones")
    g.add_argument("--train-split", dest="train_split", help="split to train on (default train)")
    g.add_argument("--val-split", dest="val_split", help="split to select on (default valid; 'none' disables)")
    g.add_argument("--skip-bad", dest="skip_bad", action="store_true", help="drop bad triples with a warning")
    g.add_argument("--workers", type=int, help="DataLoader workers (default 0)")
    g.add_argument("--threads", type=int, help="CPU intra-op threads (default: torch's; 1 is best for CPU presets)")
    g.add_argument("--augment", choices=["full", "flip", "none"],
                   help="training augmentation: full (default: flip with left/right caption swap, small affine, "
                        "brightness/contrast), flip (the flip only) or none")
    g = p.add_argument_group(
        "frozen-feature cache",
        "Compute the frozen ViT once per training image and reuse it in later epochs; the trainable parts run as "
        "usual, so losses match an uncached run. Needs --augment flip (two versions per image) or none. Kept in "
        "CPU memory, not checkpointed, one cache per DDP rank; the expected size is printed at start "
        "(tgcnet-vit-b16 at 224 px: 2.8 MB per image and version in float32).")
    g.add_argument("--cache-image-features", dest="cache_image_features", action="store_true",
                   help="cache frozen-ViT features of the training images")
    g.add_argument("--cache-dtype", dest="cache_dtype", choices=["float32", "float16", "bfloat16"],
                   help="storage dtype (default float32: exact; float16 halves memory at fp16 rounding)")
    g.add_argument("--cache-max-gb", dest="cache_max_gb", type=float,
                   help="cache size limit per process in GiB; images beyond it run the ViT every time")
    g = p.add_argument_group("model")
    g.add_argument("--preset", help="model preset (default tgcnet-tiny; see `tgcnet params`)")
    g.add_argument("--pretrained", metavar="CKPT", help="local open_clip checkpoint for the frozen CLIP towers")
    g.add_argument("--init-from", dest="init_from", metavar="DIR", help="start from a saved tgcnet model (best/)")
    g.add_argument("--knowledge", help="'default' (shipped bank), 'none', or a knowledge cache JSON path")
    g.add_argument("--set", dest="model_overrides", action="append", metavar="KEY=VALUE",
                   help="model config override, repeatable, e.g. --set sse.channels=32 --set date.lora.r=8")
    g.add_argument("--caption-override", dest="caption_override", metavar="TEXT",
                   help="use this one caption for every image (text-path ablation)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help="default 10")
    g.add_argument("--max-steps", dest="max_steps", type=int, help="stop after this many optimizer steps")
    g.add_argument("--max-minutes", dest="max_minutes", type=float,
                   help="wall-clock budget; the cosine schedule anneals to it")
    g.add_argument("--batch-size", dest="batch_size", type=int, help="per process (default 8)")
    g.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    g.add_argument("--weight-decay", dest="weight_decay", type=float, help="AdamW weight decay (default 0.01)")
    g.add_argument("--warmup-steps", dest="warmup_steps", type=int, help="linear warmup steps (default 50)")
    g.add_argument("--min-lr-ratio", dest="min_lr_ratio", type=float, help="final LR / peak LR (default 0.01)")
    g.add_argument("--image-size", dest="image_size", type=int, help="square training size, a multiple of the "
                   "patch size (default 224)")
    g.add_argument("--grad-accum", dest="grad_accum", type=int, help="batches per optimizer step (default 1)")
    g.add_argument("--clip-grad", dest="clip_grad", type=float, help="max gradient norm (default 1.0; 0 disables)")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], help="mixed precision (fp16 needs CUDA)")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    g.add_argument("--seed", type=int, help="data order, augmentation and init (default 0)")
    g.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms")
    g.add_argument("--find-unused-parameters", dest="find_unused_parameters", action="store_true",
                   help="DDP option, for custom configs with parameters unused in some steps")
    g = p.add_argument_group("checkpoints and validation")
    g.add_argument("--checkpoint-every", dest="checkpoint_every", type=int,
                   help="also checkpoint every N optimizer steps (default: epoch ends only)")
    g.add_argument("--val-every", dest="val_every", type=int, help="validate every N epochs (default 1)")
    g.add_argument("--eval-batch-size", dest="eval_batch_size", type=int)
    g.add_argument("--threshold", type=float, help="probability threshold of the metrics (default 0.5)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar or epoch lines")
    p.set_defaults(func=_cmd_train)


def train_config_from_args(args: argparse.Namespace):
    """TrainConfig from parsed args; with --resume, the saved config updated by the options given."""
    from .train import TrainConfig, parse_overrides, read_saved_config

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


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    run = train(train_config_from_args(args))
    print(f"run directory: {run}")
    return 0


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    p.set_defaults(func=_cmd_evaluate)


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    _set_threads(args.threads)

    out = Path(args.out) if args.out else Path(args.checkpoint) / f"eval_{args.split}"
    m = evaluate(args.checkpoint, args.data, args.split, out=out, layout=args.layout, image_size=args.image_size,
                 batch_size=args.batch_size, device=args.device, amp=args.amp, threshold=args.threshold,
                 knowledge=args.knowledge, pretrained=args.pretrained, skip_bad=args.skip_bad, workers=args.workers)
    print(_format_metrics(m))
    print(f"wrote {out / 'metrics.json'} and {out / 'per_image.csv'}")
    return 0


def _format_metrics(m: dict[str, Any]) -> str:
    side = "n/a" if m.get("side_error") is None else f"{m['side_error']:.4f} over {m['side_error_n']} one-side captions"
    return (f"{m['n_images']} images: Dice {m['dice']:.4f} IoU {m['iou']:.4f} (per-image mean) | "
            f"pooled Dice {m['pooled_dice']:.4f} IoU {m['pooled_iou']:.4f} | side error {side}")


def _add_predict_parser(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--knowledge", default=None)
    p.add_argument("--pretrained", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict

    _set_threads(args.threads)

    rows = predict(args.checkpoint, args.out, image=args.image, text=args.text, mask=args.mask, images=args.images,
                   captions=args.captions, masks=args.masks, device=args.device, image_size=args.image_size,
                   threshold=args.threshold, knowledge=args.knowledge, pretrained=args.pretrained)
    for r in rows:
        extra = f" Dice {r['dice']:.4f}" if "dice" in r else ""
        print(f"{r['name']}: foreground {100 * r['foreground']:.1f}%{extra} -> {r['overlay']}")
    return 0


def _add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train on the embedded QaTa-COV19 sample for a few minutes, evaluate, "
                       "write overlays")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--minutes", type=float, default=3.0, help="training budget (default 3)")
    p.add_argument("--preset", default="tgcnet-cpu")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=300, help="upper bound; the time budget usually ends first")
    p.add_argument("--set", dest="model_overrides", action="append", metavar="KEY=VALUE",
                   help="model config override, e.g. sse.channels=16")
    p.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (default 1, see run_demo)")
    p.add_argument("--device", default="auto")
    p.add_argument("--pretrained", default=None, help="local open_clip checkpoint (none: random-init CLIP)")
    p.add_argument("--force", action="store_true", help="replace an earlier demo in --out")
    p.set_defaults(func=_cmd_demo)


def run_demo(out: str | Path = "runs/demo", minutes: float = 3.0, preset: str = "tgcnet-cpu", image_size: int = 224,
             epochs: int = 300, device: str = "auto", pretrained: str | None = None, force: bool = False,
             progress: bool = True, model_overrides: dict[str, Any] | None = None,
             threads: int | None = 1) -> dict[str, Any]:
    """Train on the embedded sample (train split, select on valid), evaluate on its test split,
    and write overlays of the test images. Returns the test metrics and paths.

    The preset ``tgcnet-cpu`` is tgcnet-tiny (random-init width-64 CLIP, nothing to download)
    with a wider CNN branch and decoder: on the embedded sample, 2.5 min on 1 CPU thread at
    224 px, it gave test Dice 0.64 / pooled 0.75 against 0.55 / 0.67 for tgcnet-tiny at 160 px.

    Validation runs every 10 epochs (and at the end): with 8 validation images, picking the
    best of ~200 noisy scores chose an early, lucky epoch (val 0.58 at epoch 18, test 0.47).

    ``threads`` defaults to one: the ops of a CPU-sized model are too small for intra-op
    parallelism to pay, and on a shared machine two OpenMP threads were 4x slower per step
    than one (measured: 0.16 s vs 0.7 s per batch of 8 at 224 px).
    """
    import torch

    from tgcnet.data import sample_root

    from .evaluate import evaluate
    from .predict import Predictor, predict_items, read_captions
    from .train import TrainConfig, train

    out = Path(out)
    run_dir = out / "run"
    if run_dir.exists():
        if not force:
            raise ValueError(f"{run_dir} already exists; pass --force to replace it or choose another --out")
        shutil.rmtree(run_dir)
    if threads:
        torch.set_num_threads(threads)
    root = sample_root()
    start = time.monotonic()
    cfg = TrainConfig(data=str(root), out=str(run_dir), preset=preset, image_size=image_size, epochs=epochs,
                      max_minutes=minutes, batch_size=8, lr=3e-3, warmup_steps=20, device=device,
                      pretrained=pretrained, progress=progress, val_every=10,
                      model_overrides=model_overrides or {})
    train(cfg)
    train_s = time.monotonic() - start
    metrics = evaluate(run_dir, root, "test", out=out / "eval_test", device=device, progress=progress)
    test = root / "test"
    predictor = Predictor(run_dir, device=device)
    rows = predict_items(predictor, read_captions(test / "images", test / "prompts.csv", test / "masks"),
                         out / "overlays")
    return {"metrics": metrics, "run": str(run_dir), "eval": str(out / "eval_test"),
            "overlays": str(out / "overlays"), "n_overlays": len(rows), "train_seconds": train_s,
            "total_seconds": time.monotonic() - start}


def _cmd_demo(args: argparse.Namespace) -> int:
    from .train import parse_overrides

    overrides = parse_overrides(args.model_overrides) if args.model_overrides else None
    result = run_demo(args.out, args.minutes, args.preset, args.image_size, args.epochs, args.device,
                      args.pretrained, args.force, model_overrides=overrides, threads=args.threads)
    m = result["metrics"]
    print("\ntgcnet demo: embedded QaTa-COV19 sample (train 32 / valid 8 / test 8; random-init CLIP unless "
          "--pretrained)")
    print(f"  trained {result['train_seconds'] / 60:.1f} min -> {result['run']} (best/ by validation Dice, log.jsonl)")
    print(f"  test: {_format_metrics(m)}")
    print(f"  metrics: {result['eval']}/metrics.json, per-image: {result['eval']}/per_image.csv")
    print(f"  overlays ({result['n_overlays']}): {result['overlays']}/*_overlay.png (red: prediction, green: truth)")
    print(f"  total {result['total_seconds'] / 60:.1f} min")
    return 0


def add_engine_parsers(sub: argparse._SubParsersAction) -> None:
    """Register train, evaluate, predict and demo on tgcnet.cli's subparsers."""
    _add_train_parser(sub)
    _add_evaluate_parser(sub)
    _add_predict_parser(sub)
    _add_demo_parser(sub)


if __name__ == "__main__":  # pragma: no cover - `python -m tgcnet.engine.cli` is a convenience
    from tgcnet.cli import main

    sys.exit(main())
