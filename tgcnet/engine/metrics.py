"""Dice and IoU, per image and pooled.

Papers on QaTa-COV19 mix two definitions that differ by about 5 points, so both are
always reported:

* **per-image mean** (``dice``, ``iou``): the score of each image, averaged over images.
  Every image weighs the same, so small lesions count as much as large ones.
* **pooled / global** (``pooled_dice``, ``pooled_iou``): true/false positives and false
  negatives summed over all pixels of all images, then one score. Large lesions dominate.

Conventions, for an image (or, pooled, a whole set) with TP, FP, FN pixel counts:
``Dice = 2TP / (2TP + FP + FN)``, ``IoU = TP / (TP + FP + FN)``. When prediction and
ground truth are both empty the ratio is 0/0 and we score **Dice = IoU = 1** (nothing to
find, nothing wrongly found). An empty ground truth with a non-empty prediction scores 0,
as does a non-empty ground truth with an empty prediction.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import torch

from tgcnet.io import atomic_write

__all__ = ["binarize_prediction", "confusion_counts", "dice_iou_from_counts", "dice_iou", "MetricAccumulator",
           "write_per_image_csv"]


def binarize_prediction(pred: torch.Tensor, threshold: float = 0.5, from_logits: bool = True) -> torch.Tensor:
    """Boolean foreground of ``pred``.

    bool/integer tensors are taken as binary predictions (non-zero = foreground). Float
    tensors are probabilities thresholded at ``threshold`` or, with ``from_logits``,
    logits compared with ``logit(threshold)`` (same result as sigmoid then threshold,
    without the sigmoid's saturation).
    """
    if pred.dtype == torch.bool:
        return pred
    if not pred.is_floating_point():
        return pred != 0
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if from_logits:
        cut = torch.logit(torch.tensor(threshold, dtype=torch.float64)).item()
        return pred > cut
    return pred > threshold


def _per_image(x: torch.Tensor, what: str) -> torch.Tensor:
    """(B, N) view of a (B,H,W) or (B,1,H,W) batch."""
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"{what} must have one channel, got shape {tuple(x.shape)}")
    elif x.ndim != 3:
        raise ValueError(f"{what} must be (B,1,H,W) or (B,H,W), got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)


def confusion_counts(pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.5,
                     from_logits: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image (TP, FP, FN) pixel counts, int64 tensors of shape (B,).

    ``target`` is foreground where > 0.5 (masks in {0,1}); ``pred`` as in binarize_prediction.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    p = _per_image(binarize_prediction(pred, threshold, from_logits), "prediction")
    t = _per_image(target > 0.5 if target.dtype != torch.bool else target, "target")
    tp = (p & t).sum(1)
    fp = (p & ~t).sum(1)
    fn = (~p & t).sum(1)
    return tp, fp, fn


def dice_iou_from_counts(tp, fp, fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU from counts (tensors or numbers), 1 where TP + FP + FN = 0 (both empty)."""
    tp, fp, fn = (torch.as_tensor(v, dtype=torch.float64) for v in (tp, fp, fn))
    union = tp + fp + fn
    empty = union == 0
    dice = torch.where(empty, torch.ones_like(tp), 2 * tp / (2 * tp + fp + fn).clamp_min(1))
    iou = torch.where(empty, torch.ones_like(tp), tp / union.clamp_min(1))
    return dice, iou


def dice_iou(pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.5,
             from_logits: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Dice and IoU, float64 tensors of shape (B,)."""
    return dice_iou_from_counts(*confusion_counts(pred, target, threshold, from_logits))


class MetricAccumulator:
    """Collects per-image counts over batches; ``compute()`` gives mean and pooled scores.

    Keeps one row per image (name, TP, FP, FN, dice, iou), enough to recompute both
    definitions, to write a per-image CSV (:func:`write_per_image_csv`), and to gather
    the shards of a distributed evaluation (:meth:`sync_distributed`).
    """

    def __init__(self, threshold: float = 0.5, from_logits: bool = True):
        self.threshold = threshold
        self.from_logits = from_logits
        self.rows: list[dict[str, Any]] = []
        self._auto_names = False  # rows named by running index: not unique across ranks

    def reset(self) -> None:
        self.rows = []
        self._auto_names = False

    def __len__(self) -> int:
        return len(self.rows)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor, names: Sequence[str] | None = None) -> torch.Tensor:
        """Add a batch; returns its per-image Dice (B,) for progress bars."""
        tp, fp, fn = confusion_counts(pred.detach(), target.detach(), self.threshold, self.from_logits)
        if names is None:
            start = len(self.rows)
            names = [str(start + i) for i in range(len(tp))]
            self._auto_names = True
        elif len(names) != len(tp):
            raise ValueError(f"got {len(names)} names for a batch of {len(tp)} images")
        dice, iou = dice_iou_from_counts(tp, fp, fn)
        for name, *vals in zip(names, tp.tolist(), fp.tolist(), fn.tolist(), dice.tolist(), iou.tolist()):
            self.rows.append(dict(zip(("name", "tp", "fp", "fn", "dice", "iou"), (str(name), *vals))))
        return dice

    def sync_distributed(self) -> None:
        """Gather every rank's rows onto every rank (no-op outside torch.distributed).

        A sharded sampler pads the last batch with repeated samples; when rows carry the
        images' names, those come back as duplicate names and are dropped so each image
        counts once. Rows named by running index cannot be deduplicated: pass names.
        """
        from .distributed import all_gather_rows

        self.rows = all_gather_rows(self.rows, dedupe=not self._auto_names)

    def compute(self) -> dict[str, Any]:
        """``dice``, ``iou`` (per-image means), ``pooled_dice``, ``pooled_iou``, ``n_images``, ``rows``."""
        n = len(self.rows)
        if n == 0:
            raise ValueError("no images were added to the MetricAccumulator")
        tp, fp, fn = (sum(r[k] for r in self.rows) for k in ("tp", "fp", "fn"))
        pooled_dice, pooled_iou = dice_iou_from_counts(tp, fp, fn)
        return {
            "dice": sum(r["dice"] for r in self.rows) / n,
            "iou": sum(r["iou"] for r in self.rows) / n,
            "pooled_dice": float(pooled_dice),
            "pooled_iou": float(pooled_iou),
            "n_images": n,
            "rows": [dict(r) for r in self.rows],
        }


def write_per_image_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """One CSV line per image, the columns in the order of the first row's keys.

    Takes :attr:`MetricAccumulator.rows` or the rows of an evaluation (name, caption,
    dice, iou, side_error); a None value (no side error for a caption naming no side)
    is written as an empty cell. All or nothing: an evaluation stopped mid-write leaves the
    previous file, never a table that silently lacks images.
    """
    columns = list(rows[0]) if rows else ["name", "dice", "iou"]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return atomic_write(path, write)
