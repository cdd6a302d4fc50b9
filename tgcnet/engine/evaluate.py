"""Evaluation: per-image and pooled Dice/IoU plus side error on one split of a data set.

``tgcnet evaluate --checkpoint RUN_DIR --data DIR --split test`` writes ``metrics.json`` and
``per_image.csv``. The same inference loop validates during training, so the number that
picks the best checkpoint is computed exactly like the number reported afterwards.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from torch.utils.data import DataLoader

from tgcnet.adapters import save_json_atomic
from tgcnet.data import SegmentationDataset, build_transforms, collate, read_split
from tgcnet.data.readers import DataError, format_problems
from tgcnet.guidance import side_error
from tgcnet.model import CONFIG_NAME, TGCNet

from .distributed import ShardedEpochSampler, resolve_device
from .metrics import MetricAccumulator

__all__ = ["INFERENCE_NAME", "resolve_checkpoint", "load_inference_model", "run_inference", "evaluate",
           "autocast_context", "knowledge_arg", "check_caption_lengths"]

#: Written beside a saved model by the trainer: what inference needs that the model config lacks.
INFERENCE_NAME = "inference.json"
DEFAULT_IMAGE_SIZE = 224
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def override_captions(triples: list, caption: Optional[str]) -> list:
    """The triples with every caption replaced by ``caption`` (None: unchanged)."""
    if caption is None:
        return triples
    if not caption.strip():
        raise ValueError("caption_override must be a non-empty string")
    return [dataclasses.replace(t, caption=caption) for t in triples]


def check_caption_lengths(model: TGCNet, triples: list, where: str, skip_bad: bool = False) -> list:
    """The triples, after refusing (or, with ``skip_bad``, dropping) those whose caption is
    longer than the text context: one error naming every such file, before the first batch,
    rather than a failure mid-epoch."""
    overlong = model.overlong_captions([t.caption for t in triples])
    if not overlong:
        return triples
    problems = [(triples[i].image_path, f"caption has {n} tokens, more than the {model.max_caption_tokens} "
                 f"the text context holds") for i, n in overlong]
    message = f"{where}: {len(problems)} of {len(triples)} captions are too long\n{format_problems(problems)}"
    if not skip_bad:
        raise DataError(message + "\nShorten them, or pass skip_bad=True (--skip-bad) to drop them.", problems)
    warnings.warn(f"skipped {len(problems)} entries: {message}", stacklevel=2)
    bad = {i for i, _ in overlong}
    kept = [t for i, t in enumerate(triples) if i not in bad]
    if not kept:
        raise DataError(f"{where}: no usable triples left after skipping {len(problems)} with too long captions",
                        problems)
    return kept


def autocast_context(device: torch.device, amp: str):
    """autocast for ``amp`` in {none, bf16, fp16}; fp16 needs CUDA (CPU autocast is bf16 only)."""
    if amp not in ("none", *_AMP_DTYPES):
        raise ValueError(f"amp must be one of none, bf16, fp16; got {amp!r}")
    if amp == "none":
        return nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp fp16 needs a CUDA device; use --amp bf16 (or none) on the CPU")
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[amp])


def knowledge_arg(knowledge: Optional[str]) -> Optional[str]:
    """CLI/JSON spelling -> create_model's: ``"none"`` disables knowledge."""
    if knowledge is None or str(knowledge).lower() == "none":
        return None
    return str(knowledge)


def resolve_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(model directory, inference settings) of a run directory or a save_pretrained directory.

    A run directory resolves to its ``best/`` (else ``last/``). Settings (image size,
    knowledge, threshold) come from ``inference.json`` beside the weights, else from the
    run's ``train_config.json``, else defaults.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    candidates = [path, path / "best", path / "last"]
    model_dir = next((c for c in candidates if (c / CONFIG_NAME).is_file()), None)
    if model_dir is None:
        raise FileNotFoundError(f"{path} is neither a saved model ({CONFIG_NAME} + model.safetensors) nor a run "
                                f"directory with best/ or last/ inside")
    info: dict[str, Any] = {}
    for source in (model_dir.parent / "train_config.json", model_dir / INFERENCE_NAME):
        if source.is_file():
            with open(source, encoding="utf-8") as f:
                data = json.load(f)
            train = data.get("train", data)
            info.update({k: train[k] for k in ("image_size", "knowledge", "threshold", "pretrained",
                                               "caption_override") if k in train})
    return model_dir, info


def load_inference_model(checkpoint: str | Path, device: str | torch.device | None = "auto",
                         knowledge: Optional[str] = None, pretrained: Optional[str] = None
                         ) -> tuple[TGCNet, dict[str, Any]]:
    """Rebuild a trained model in eval mode; knowledge defaults to what it was trained with."""
    model_dir, info = resolve_checkpoint(checkpoint)
    if knowledge is None:
        knowledge = info.get("knowledge", "default")
    info["knowledge"] = knowledge
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model = TGCNet.from_pretrained(model_dir, pretrained=pretrained or info.get("pretrained"),
                                   knowledge=knowledge_arg(knowledge), map_location=dev)
    model.eval()
    info["model_dir"] = str(model_dir)
    return model, info


@torch.no_grad()
def run_inference(model: torch.nn.Module, loader: Iterable[dict[str, Any]], device: torch.device,
                  amp: str = "none", threshold: float = 0.5, laterality: str = "image",
                  progress: bool = False, desc: str = "eval") -> tuple[MetricAccumulator, list[dict[str, Any]]]:
    """Dice/IoU accumulator and per-image rows (name, caption, dice, iou, side_error) of a loader.

    Not synchronised across ranks: callers of a sharded loader call ``sync_distributed``.
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    acc = MetricAccumulator(threshold=threshold)
    rows: list[dict[str, Any]] = []
    bar = tqdm(loader, desc=desc, leave=False, disable=not (progress and sys.stderr.isatty()))
    try:
        for batch in bar:
            images = batch["image"].to(device, non_blocking=True)
            masks = batch["mask"].to(device, non_blocking=True)
            with autocast_context(device, amp):
                logits = model(images, batch["caption"])
            logits = logits.float()
            dice = acc.update(logits, masks, names=batch["name"])
            probs = torch.sigmoid(logits)
            sides = side_error(probs, batch["caption"], laterality=laterality, threshold=threshold)
            for i, name in enumerate(batch["name"]):
                rows.append({"name": name, "caption": batch["caption"][i], "dice": float(dice[i]),
                             "iou": acc.rows[len(acc.rows) - len(batch["name"]) + i]["iou"],
                             "side_error": sides[i]})
    finally:
        model.train(was_training)
    return acc, rows


def summarize(acc: MetricAccumulator, rows: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """metrics.json content: per-image means, pooled scores and the mean side error."""
    out = acc.compute()
    out.pop("rows")
    sides = [r["side_error"] for r in rows if r["side_error"] is not None]
    out.update({
        "threshold": threshold,
        "side_error": (sum(sides) / len(sides)) if sides else None,
        "side_error_n": len(sides),
    })
    return out


def write_per_image_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["name", "caption", "dice", "iou", "side_error"])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "side_error": "" if r["side_error"] is None else r["side_error"]})
    return path


def make_loader(triples, image_size: int, batch_size: int, workers: int = 0, rank: int = 0,
                world_size: int = 1) -> DataLoader:
    """Eval loader (resize only, file order, sharded like training when distributed)."""
    ds = SegmentationDataset(triples, build_transforms(False, image_size))
    sampler = ShardedEpochSampler(len(ds), shuffle=False, rank=rank, world_size=world_size)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate)


def evaluate(checkpoint: str | Path, data: str | Path, split: str = "test", *, out: str | Path | None = None,
             layout: Optional[str] = None, image_size: Optional[int] = None, batch_size: int = 8,
             device: str = "auto", amp: str = "none", threshold: Optional[float] = None,
             knowledge: Optional[str] = None, pretrained: Optional[str] = None, skip_bad: bool = False,
             workers: int = 0, progress: bool = True) -> dict[str, Any]:
    """Evaluate a trained model on ``split`` of ``data``; returns the metrics dict.

    With ``out``, writes ``out/metrics.json`` and ``out/per_image.csv``. Image size and
    knowledge default to the ones the model was trained with, and so does a training-time
    ``caption_override`` (a text-ablated model is evaluated with the caption it was trained on).
    """
    model, info = load_inference_model(checkpoint, device=device, knowledge=knowledge, pretrained=pretrained)
    dev = next(model.parameters()).device
    size = int(image_size or info.get("image_size") or DEFAULT_IMAGE_SIZE)
    thr = float(threshold if threshold is not None else info.get("threshold", 0.5))
    if not math.isfinite(thr) or not 0 < thr < 1:
        raise ValueError(f"threshold must be in (0, 1), got {thr}")
    triples = override_captions(read_split(data, split, layout=layout, skip_bad=skip_bad),
                                info.get("caption_override"))
    triples = check_caption_lengths(model, triples, f"data set {data}, split {split!r}", skip_bad)
    loader = make_loader(triples, size, batch_size, workers)
    acc, rows = run_inference(model, loader, dev, amp=amp, threshold=thr, laterality=model.config.laterality,
                              progress=progress, desc=f"evaluate {split}")
    metrics = summarize(acc, rows, thr)
    metrics.update({"split": split, "data": str(data), "checkpoint": info["model_dir"], "image_size": size,
                    "knowledge": info["knowledge"], "caption_override": info.get("caption_override")})
    if out is not None:
        out = Path(out)
        save_json_atomic(metrics, out / "metrics.json")
        write_per_image_csv(rows, out / "per_image.csv")
    return metrics
