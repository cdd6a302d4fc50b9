"""The inference loop that training, evaluation and the benchmarks share: logits per batch, Dice/IoU
and side error per image, and their summary.

The same :func:`run_inference` validates during training and evaluates afterwards, so the
number that picks the best checkpoint is computed exactly like the number reported later.
Loading a trained model is :mod:`.loading`; the captions' override and length check are
:mod:`.split_captions`.
"""
from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Any, Iterable, Iterator, NamedTuple

import torch
from torch.utils.data import DataLoader

from tgcnet.data import SegmentationDataset, build_transforms, collate
from tgcnet.guidance import side_error
from tgcnet.tta import check_tta, tta_logits

from .distributed import ShardedEpochSampler
from .metrics import MetricAccumulator

__all__ = ["BatchLogits", "batch_logits", "run_inference", "summarize", "make_loader", "autocast_context"]

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(device: torch.device, amp: str):
    """autocast for ``amp`` in {none, bf16, fp16}; fp16 needs CUDA (CPU autocast is bf16 only)."""
    if amp not in ("none", *_AMP_DTYPES):
        raise ValueError(f"amp must be one of none, bf16, fp16; got {amp!r}")
    if amp == "none":
        return nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp fp16 needs a CUDA device; use --amp bf16 (or none) on the CPU")
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[amp])


class BatchLogits(NamedTuple):
    """One batch as the inference loop sees it: float32 logits and masks, both (B, 1, H, W) on the device."""

    names: list[str]
    captions: list[str]
    logits: torch.Tensor
    masks: torch.Tensor


@torch.no_grad()
def batch_logits(model: torch.nn.Module, batches: Iterable[dict[str, Any]], device: torch.device,
                 amp: str = "none", tta: str = "none") -> Iterator[BatchLogits]:
    """Each batch's logits under ``amp`` and test-time augmentation ``tta`` (:mod:`tgcnet.tta`).

    The one place logits are computed for scoring: :func:`run_inference` cuts them at one
    threshold, and a caller that needs the same logits cut other ways (a threshold sweep) reads
    them here instead of copying the loop. The model's train/eval mode is the caller's.
    """
    check_tta(tta)
    for batch in batches:
        images = batch["image"].to(device, non_blocking=True)
        masks = batch["mask"].to(device, non_blocking=True)
        with autocast_context(device, amp):
            logits = tta_logits(model, images, batch["caption"], tta)
        yield BatchLogits(batch["name"], batch["caption"], logits.float(), masks)


@torch.no_grad()
def run_inference(model: torch.nn.Module, loader: Iterable[dict[str, Any]], device: torch.device,
                  amp: str = "none", threshold: float = 0.5, laterality: str = "image",
                  progress: bool = False, desc: str = "eval",
                  tta: str = "none") -> tuple[MetricAccumulator, list[dict[str, Any]]]:
    """Dice/IoU accumulator and per-image rows (name, caption, dice, iou, side_error) of a loader,
    each batch segmented with the test-time augmentation ``tta`` (:mod:`tgcnet.tta`).

    Not synchronised across ranks: callers of a sharded loader gather both
    (``acc.sync_distributed()``, ``distributed.all_gather_rows(rows)``).
    """
    from tqdm.auto import tqdm

    check_tta(tta)
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(threshold=threshold)
    rows: list[dict[str, Any]] = []
    bar = tqdm(loader, desc=desc, leave=False, disable=not (progress and sys.stderr.isatty()))
    try:
        for batch in batch_logits(model, bar, device, amp, tta):
            acc.update(batch.logits, batch.masks, names=batch.names)
            sides = side_error(torch.sigmoid(batch.logits), batch.captions, laterality=laterality,
                               threshold=threshold)
            new = acc.rows[len(acc.rows) - len(batch.names):]
            rows += [{"name": r["name"], "caption": caption, "dice": r["dice"], "iou": r["iou"], "side_error": side}
                     for r, caption, side in zip(new, batch.captions, sides)]
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


def make_loader(triples, image_size: int, batch_size: int, workers: int = 0, rank: int = 0,
                world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """Eval loader (resize only, file order, sharded like training when distributed).

    ``pin_memory`` (for a CUDA run): batches in page-locked memory, so the loops'
    ``.to(device, non_blocking=True)`` overlaps the copy with the GPU's work. With workers,
    they stay alive between passes (``persistent_workers``): validation runs every epoch over
    the same fixed items, and re-forking the workers each time would leave the GPU waiting.
    The items depend on nothing but their index, so any worker count gives the same batches.
    """
    ds = SegmentationDataset(triples, build_transforms(False, image_size))
    sampler = ShardedEpochSampler(len(ds), shuffle=False, rank=rank, world_size=world_size)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory, persistent_workers=workers > 0)
