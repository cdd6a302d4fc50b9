"""Evaluation: per-image and pooled Dice/IoU plus side error on one split of a data set.

``tgcnet evaluate --checkpoint RUN_DIR --data DIR --split test`` writes ``metrics.json`` and
``per_image.csv``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from tgcnet.io import save_json_atomic
from tgcnet.data import read_split
from tgcnet.tta import check_tta

from .factory_model import ModelFactory
from .files import METRICS_NAME, PER_IMAGE_NAME
from .inference import make_loader, run_inference, summarize
from .loading import DEFAULT_IMAGE_SIZE, load_inference_model
from .metrics import write_per_image_csv
from .split_captions import check_caption_lengths, override_captions

__all__ = ["evaluate", "evaluation_loader"]


def _image_size(info: dict[str, Any], image_size: Optional[int] = None) -> int:
    """The input size a split is scored at: ``image_size``, else the run's, else the default."""
    return int(image_size or info.get("image_size") or DEFAULT_IMAGE_SIZE)


def evaluation_loader(model: torch.nn.Module, info: dict[str, Any], data: str | Path, split: str, *,
                      layout: Optional[str] = None, image_size: Optional[int] = None, batch_size: int = 8,
                      skip_bad: bool = False, workers: int = 0) -> DataLoader:
    """The batches :func:`evaluate` scores, for a model and the settings ``load_inference_model`` read.

    The split read, the run's training-time caption override applied, overlong captions refused
    (or dropped with ``skip_bad``), resized to ``image_size``, else the run's, in file order.
    Public so that a benchmark which cuts evaluate's logits other ways (a threshold sweep, through
    :func:`tgcnet.engine.inference.batch_logits`) reads exactly the batches evaluate reads.
    """
    triples = override_captions(read_split(data, split, layout=layout, skip_bad=skip_bad),
                                info.get("caption_override"))
    triples = check_caption_lengths(model, triples, f"data set {data}, split {split!r}", skip_bad)
    return make_loader(triples, _image_size(info, image_size), batch_size, workers)


def evaluate(checkpoint: str | Path, data: str | Path, split: str = "test", *, out: str | Path | None = None,
             layout: Optional[str] = None, image_size: Optional[int] = None, batch_size: int = 8,
             device: str = "auto", amp: str = "none", threshold: Optional[float] = None,
             knowledge: Optional[str] = None, pretrained: Optional[str] = None, skip_bad: bool = False,
             workers: int = 0, progress: bool = True, tta: str = "none",
             model_factory: Optional[ModelFactory] = None) -> dict[str, Any]:
    """Evaluate a trained model on ``split`` of ``data``; returns the metrics dict.

    With ``out``, writes ``out/metrics.json`` and ``out/per_image.csv``. Image size and
    knowledge default to the ones the model was trained with, and so does a training-time
    ``caption_override`` (a text-ablated model is evaluated with the caption it was trained on).
    A run trained with ``train(cfg, model_factory=make)`` is evaluated with the same ``make``.
    ``tta="flip"`` averages in the flipped image with its caption's sides swapped (:mod:`tgcnet.tta`).
    """
    check_tta(tta)
    model, info = load_inference_model(checkpoint, device=device, knowledge=knowledge, pretrained=pretrained,
                                       model_factory=model_factory)
    dev = next(model.parameters()).device
    thr = float(threshold if threshold is not None else info.get("threshold", 0.5))
    if not math.isfinite(thr) or not 0 < thr < 1:
        raise ValueError(f"threshold must be in (0, 1), got {thr}")
    loader = evaluation_loader(model, info, data, split, layout=layout, image_size=image_size,
                               batch_size=batch_size, skip_bad=skip_bad, workers=workers)
    acc, rows = run_inference(model, loader, dev, amp=amp, threshold=thr, laterality=model.config.laterality,
                              progress=progress, desc=f"evaluate {split}", tta=tta)
    metrics = summarize(acc, rows, thr)
    metrics.update({"split": split, "data": str(data), "checkpoint": info["model_dir"],
                    "image_size": _image_size(info, image_size), "knowledge": info["knowledge"],
                    "caption_override": info.get("caption_override"), "tta": tta})
    if out is not None:
        out = Path(out)
        save_json_atomic(metrics, out / METRICS_NAME)
        write_per_image_csv(rows, out / PER_IMAGE_NAME)
    return metrics
