"""What training, evaluation and prediction share: loading a trained model, the inference loop,
caption checks, autocast and the summary of per-image rows.

The same :func:`run_inference` validates during training and evaluates afterwards, so the
number that picks the best checkpoint is computed exactly like the number reported later.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from torch.utils.data import DataLoader

from tgcnet.data import SegmentationDataset, build_transforms, collate
from tgcnet.data.readers import DataError, format_problems
from tgcnet.guidance import side_error
from tgcnet.tta import check_tta, tta_logits

from .distributed import ShardedEpochSampler, resolve_device
from .factory_model import ModelFactory, build_factory_model, is_factory_model_dir
from .files import BEST_DIR, INFERENCE_NAME, LAST_DIR, MODEL_CONFIG_NAME, TRAIN_CONFIG_NAME, WEIGHTS_NAME
from .metrics import MetricAccumulator

__all__ = ["DEFAULT_IMAGE_SIZE", "resolve_checkpoint", "load_inference_model", "prepare_for_device",
           "run_inference", "summarize", "make_loader", "autocast_context", "knowledge_arg",
           "check_caption_lengths", "override_captions"]

DEFAULT_IMAGE_SIZE = 224
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def override_captions(triples: list, caption: Optional[str]) -> list:
    """The triples with every caption replaced by ``caption`` (None: unchanged)."""
    if caption is None:
        return triples
    if not caption.strip():
        raise ValueError("caption_override must be a non-empty string")
    return [dataclasses.replace(t, caption=caption) for t in triples]


def check_caption_lengths(model: torch.nn.Module, triples: list, where: str, skip_bad: bool = False) -> list:
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


def prepare_for_device(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device``; on the CPU, a TGCNet also gets this processor's linear kernels
    (:func:`tgcnet.accel.optimize_for_cpu`: a fact about the machine, not part of the config)."""
    from tgcnet.accel import optimize_for_cpu
    from tgcnet.model import TGCNet

    model = model.to(device)
    if device.type == "cpu" and isinstance(model, TGCNet):
        model = optimize_for_cpu(model)
    return model


def resolve_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(model directory, inference settings) of a run directory or a save_pretrained directory.

    A run directory resolves to its ``best/`` (else ``last/``). Settings (image size,
    knowledge, threshold) come from ``inference.json`` beside the weights, else from the
    run's ``train_config.json``, else defaults.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    candidates = [path, path / BEST_DIR, path / LAST_DIR]
    model_dir = next((c for c in candidates if (c / MODEL_CONFIG_NAME).is_file()), None)
    if model_dir is None:
        raise FileNotFoundError(f"{path} is neither a saved model ({MODEL_CONFIG_NAME} + {WEIGHTS_NAME}) nor a "
                                f"run directory with {BEST_DIR}/ or {LAST_DIR}/ inside")
    info: dict[str, Any] = {}
    for source in (model_dir.parent / TRAIN_CONFIG_NAME, model_dir / INFERENCE_NAME):
        if source.is_file():
            with open(source, encoding="utf-8") as f:
                data = json.load(f)
            train = data.get("train", data)
            info.update({k: train[k] for k in ("image_size", "knowledge", "threshold", "pretrained",
                                               "caption_override") if k in train})
    return model_dir, info


def _load_factory_model(model_dir: Path, model_factory: ModelFactory, dev: torch.device) -> torch.nn.Module:
    """Rebuild a factory model from the run's settings and load its saved weights."""
    from tgcnet.io import load_safetensors

    from .train_config import TrainConfig, read_saved_config

    if not (model_dir.parent / TRAIN_CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{model_dir} holds a model_factory model but {model_dir.parent / TRAIN_CONFIG_NAME} "
                                "is missing: the factory is called with the run's TrainConfig; pass the run directory")
    model = build_factory_model(model_factory, TrainConfig.from_dict(read_saved_config(model_dir.parent)))
    model.load_trainable_state_dict(load_safetensors(model_dir / WEIGHTS_NAME), source=str(model_dir))
    return model.to(dev)


def load_inference_model(checkpoint: str | Path, device: str | torch.device | None = "auto",
                         knowledge: Optional[str] = None, pretrained: Optional[str] = None,
                         model_factory: Optional[ModelFactory] = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a trained model in eval mode; knowledge defaults to what it was trained with.

    A model trained through ``train(..., model_factory=make)`` is rebuilt by the same
    ``make`` (see tgcnet.engine.factory_model); a TGCNet needs none.
    """
    from tgcnet.model import TGCNet

    model_dir, info = resolve_checkpoint(checkpoint)
    if knowledge is None:
        knowledge = info.get("knowledge", "default")
    info["knowledge"] = knowledge
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    factory_dir = is_factory_model_dir(model_dir)
    if factory_dir != (model_factory is not None):
        raise ValueError(f"{model_dir} holds a model built by a model_factory; pass the same model_factory to "
                         "rebuild it" if factory_dir else
                         f"{model_dir} holds a TGCNet, not a model_factory model; call without model_factory")
    if model_factory is not None:
        model = _load_factory_model(model_dir, model_factory, dev)
    else:
        model = TGCNet.from_pretrained(model_dir, pretrained=pretrained or info.get("pretrained"),
                                       knowledge=knowledge_arg(knowledge), map_location=dev)
    model = prepare_for_device(model, dev)
    model.eval()
    info["model_dir"] = str(model_dir)
    return model, info


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
        for batch in bar:
            images = batch["image"].to(device, non_blocking=True)
            masks = batch["mask"].to(device, non_blocking=True)
            with autocast_context(device, amp):
                logits = tta_logits(model, images, batch["caption"], tta)
            logits = logits.float()
            acc.update(logits, masks, names=batch["name"])
            sides = side_error(torch.sigmoid(logits), batch["caption"], laterality=laterality, threshold=threshold)
            new = acc.rows[len(acc.rows) - len(batch["name"]):]
            rows += [{"name": r["name"], "caption": caption, "dice": r["dice"], "iou": r["iou"], "side_error": side}
                     for r, caption, side in zip(new, batch["caption"], sides)]
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
                world_size: int = 1) -> DataLoader:
    """Eval loader (resize only, file order, sharded like training when distributed)."""
    ds = SegmentationDataset(triples, build_transforms(False, image_size))
    sampler = ShardedEpochSampler(len(ds), shuffle=False, rank=rank, world_size=world_size)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate)
