"""Fine-tuning loop: AdamW over the trainable parameters, warmup + cosine, Dice+BCE, AMP, DDP.

One process or ``torchrun --nproc_per_node=K -m tgcnet.cli train ...``. The loop is
written so that a run killed at any point and resumed with ``--resume RUN_DIR`` ends with
the same weights as an uninterrupted run: the data order is a pure function of
(seed, epoch), augmentation of (seed, epoch, index) (see SegmentationDataset), and a
checkpoint records the optimizer, scheduler, scaler, RNG states and how many batches of
the current epoch were consumed.

The run directory's files are listed in tgcnet.engine.files. ``train(cfg, model_factory=make)``
trains another model through the same loop (see tgcnet.engine.factory_model).

Everything a run can be refused for (settings, data, model build, image size against the
patch size, amp on the device) is checked before anything is written there. A directory
with no checkpoint and no best/ holds no run: a new run replaces its train_config.json and
log.jsonl (left by a start that failed before its first checkpoint) instead of asking for
--resume.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from tgcnet.io import atomic_write_text, save_json_atomic
from tgcnet.data import SegmentationDataset, build_transforms, collate, read_split
from tgcnet.model import ViTFeatures

from . import checkpoint as ckpt
from .distributed import (DistInfo, ShardedEpochSampler, all_gather_rows, broadcast_object, cleanup_distributed,
                          resolve_device, setup_distributed)
from .factory_model import ModelFactory, build_factory_model
from .feature_cache import CACHE_DTYPES, FeatureCache, bytes_per_image
from .files import BEST_DIR, INFERENCE_NAME, LAST_DIR, LOG_NAME, TRAIN_CONFIG_NAME
from .inference import (autocast_context, check_caption_lengths, knowledge_arg, make_loader, override_captions,
                        prepare_for_device, run_inference, summarize)
from .train_config import RESUME_FIXED, TrainConfig, read_saved_config

__all__ = ["Trainer", "train", "lr_factor"]

def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0,
              time_fraction: float = 0.0) -> float:
    """Linear warmup to 1, then cosine to ``min_ratio`` at the end of training.

    "The end" is whichever comes first of ``total_steps`` and the wall-clock budget
    (``time_fraction`` of it used), so a time-bounded run still anneals.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max((step - warmup_steps) / span, time_fraction))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class _Clock:
    """Wall-clock budget shared with the LR schedule; elapsed time survives a resume."""

    def __init__(self, budget_s: Optional[float], elapsed: float = 0.0) -> None:
        self.budget_s = budget_s
        self.offset = elapsed
        self.start = time.monotonic()
        self.synced = elapsed

    def elapsed(self) -> float:
        return self.offset + time.monotonic() - self.start

    def sync(self) -> None:
        """Agree on rank 0's time, so every rank sees the same LR and the same stop decision."""
        t = self.elapsed()
        if self.budget_s is not None and dist.is_available() and dist.is_initialized():
            box = torch.tensor([t], dtype=torch.float64)
            dist.broadcast(box, src=0)
            t = float(box.item())
        self.synced = t

    @property
    def fraction(self) -> float:
        return 0.0 if self.budget_s is None else min(1.0, self.synced / self.budget_s)

    @property
    def out_of_time(self) -> bool:
        return self.budget_s is not None and self.synced >= self.budget_s


def _size(nbytes: float) -> str:
    """1536 -> '1.5 KiB': sizes from bytes to terabytes readable in one log line."""
    if nbytes < 1024:
        return f"{int(nbytes)} B"
    for unit in ("KiB", "MiB", "GiB"):
        nbytes /= 1024
        if nbytes < 1024:
            return f"{nbytes:.1f} {unit}"
    return f"{nbytes / 1024:.1f} TiB"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_fresh(out: Path) -> None:
    """Refuse a directory holding a run's checkpoint or model; leftovers of a run that never
    saved one (train_config.json, log.jsonl of a failed start) are no run, and are replaced."""
    if ckpt.has_run(out):
        raise ValueError(f"{out} already holds a training run; pass --resume {out} to continue it, "
                         "or choose another --out")
    best = out / BEST_DIR
    if best.exists():
        raise ValueError(f"{out} already holds a training run: a model in {best}, but no checkpoint to resume; "
                         f"choose another --out (--init-from {best} starts from that model), or delete {out}")


def _check_resumable(run: Path) -> None:
    """Fail before building anything when there is no checkpoint at all (a damaged one is
    reported, with what survives, by checkpoint.load_checkpoint)."""
    if ckpt.find_checkpoint(run) is not None or (run / LAST_DIR).exists():
        return
    if (run / BEST_DIR).exists():
        raise FileNotFoundError(f"cannot resume {run}: it holds no checkpoint, only a model in {run / BEST_DIR}; "
                                f"start a new run from it with --init-from {run / BEST_DIR} --out NEW_DIR")
    raise FileNotFoundError(f"cannot resume {run}: it holds no checkpoint (the run stopped before saving its "
                            f"first); start it afresh: the same command without --resume, with --out {run}")


def _resolve_config(config: TrainConfig) -> tuple[TrainConfig, Optional[dict]]:
    """The effective config and, when resuming, the saved one it was checked against."""
    if config.resume is None:
        _check_fresh(Path(config.out))
        return config, None
    run = Path(config.resume)
    saved = read_saved_config(run)
    _check_resumable(run)
    changed = [f"{k}: saved {saved.get(k)!r}, now {getattr(config, k)!r}"
               for k in RESUME_FIXED if k in saved and saved[k] != getattr(config, k)]
    if changed:
        raise ValueError(f"cannot resume {run} with a different data order or model: " + "; ".join(changed))
    config = dataclasses.replace(config, out=str(run))
    return config, saved


class Trainer:
    """One training run in one process (of possibly several under torchrun)."""

    def __init__(self, config: TrainConfig, device: torch.device, dist_info: DistInfo,
                 model_factory: Optional[ModelFactory] = None) -> None:
        self.cfg, self.device, self.dist = config, device, dist_info
        self.model_factory = model_factory
        self.run_dir = Path(config.out)
        self.amp_ctx = lambda: autocast_context(device, config.amp)
        _seed_everything(config.seed)  # identical trainable init on every rank
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        autocast_context(device, config.amp)  # refuses fp16 on the CPU now, not at the first batch
        self._read_data()
        self._build_model()
        self._check_image_size()
        self._build_data()  # after the model: captions are checked against its text context
        self.feature_cache = self._build_feature_cache()
        _seed_everything(config.seed + 1000 * dist_info.rank)
        self._build_optimizer()
        self.state: dict[str, Any] = {"epoch": 0, "batches_done": 0, "global_step": 0, "best_dice": None,
                                      "best_epoch": None, "validated": False, "loss_sum": 0.0, "loss_count": 0,
                                      "elapsed": 0.0}

    # ------------------------------------------------------------------ setup
    def _read_data(self) -> None:
        """Read and check the files first: a bad data set fails before a model is built."""
        cfg = self.cfg
        read = lambda split: override_captions(read_split(cfg.data, split, layout=cfg.layout, skip_bad=cfg.skip_bad),
                                               cfg.caption_override)
        self.splits = {"train": read(cfg.train_split)}
        if cfg.val_split:
            self.splits["val"] = read(cfg.val_split)

    def _build_data(self) -> None:
        cfg = self.cfg
        split_names = {"train": cfg.train_split, "val": cfg.val_split}
        triples = {key: check_caption_lengths(self.model, rows, f"data set {cfg.data}, split {split_names[key]!r}",
                                              cfg.skip_bad)
                   for key, rows in self.splits.items()}
        self.train_set = SegmentationDataset(
            triples["train"], build_transforms(True, cfg.image_size, seed=cfg.seed, augment=cfg.augment),
            seed=cfg.seed)
        self.val_loader = None
        if "val" in triples:
            self.val_loader = make_loader(triples["val"], cfg.image_size, cfg.eval_batch_size or cfg.batch_size,
                                          cfg.workers, self.dist.rank, self.dist.world_size)
        per_rank = len(ShardedEpochSampler(len(self.train_set), rank=self.dist.rank,
                                           world_size=self.dist.world_size))
        self.batches_per_epoch = -(-per_rank // cfg.batch_size)
        self.steps_per_epoch = -(-self.batches_per_epoch // cfg.grad_accum)
        total = self.steps_per_epoch * cfg.epochs
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total

    def _build_model(self) -> None:
        cfg = self.cfg
        if self.model_factory is not None:
            if cfg.cache_image_features:
                raise ValueError("cache_image_features needs a TGCNet (its frozen ViT is what is cached); "
                                 "drop --cache-image-features when training through a model_factory")
            self.model = build_factory_model(self.model_factory, cfg)
        else:
            self.model = self._build_tgcnet()
        self.model = prepare_for_device(self.model, self.device)
        self.params = [p for p in self.model.trainable_parameters()]
        if not self.params:
            raise ValueError(f"preset {cfg.preset!r} has no trainable parameters")
        self.net: torch.nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DDP(self.model, device_ids=ids, find_unused_parameters=cfg.find_unused_parameters)

    def _build_tgcnet(self) -> torch.nn.Module:
        from tgcnet.factory import create_model
        from tgcnet.model import TGCNet

        cfg = self.cfg
        model = create_model(cfg.preset, pretrained=cfg.pretrained, knowledge=knowledge_arg(cfg.knowledge),
                             **cfg.model_overrides)
        if cfg.init_from:
            start = TGCNet.from_pretrained(cfg.init_from, pretrained=cfg.pretrained, knowledge=None)
            model.load_trainable_state_dict(start.trainable_state_dict(), source=cfg.init_from)
        return model

    def _check_image_size(self) -> None:
        """Here, not at the first forward: everything a run is refused for must fail before
        the run directory is written, so the corrected command starts cleanly."""
        size, patch = self.cfg.image_size, self.model.patch_size
        if patch is not None and size % patch:
            lower = size // patch * patch
            sizes = " or ".join(str(s) for s in (lower, lower + patch) if s > 0)
            raise ValueError(f"image_size {size} is not a multiple of the patch size {patch} of preset "
                             f"{self.cfg.preset!r}; use --image-size {sizes}")

    def _build_feature_cache(self) -> Optional[FeatureCache]:
        cfg = self.cfg
        if not cfg.cache_image_features:
            return None
        max_bytes = None if cfg.cache_max_gb is None else int(cfg.cache_max_gb * 2**30)
        return FeatureCache(CACHE_DTYPES[cfg.cache_dtype], max_bytes=max_bytes)

    def _describe_feature_cache(self) -> str:
        """Expected size, so a run that will not fit says so before the first epoch, not in swap."""
        cfg = self.cfg
        per_image = bytes_per_image(self.model, cfg.image_size, CACHE_DTYPES[cfg.cache_dtype])
        versions = 2 if cfg.augment == "flip" else 1
        total = per_image * versions * len(self.train_set)
        cap = "no limit" if cfg.cache_max_gb is None else f"limit {cfg.cache_max_gb:g} GiB"
        return (f"feature cache: {_size(per_image)} per image ({cfg.cache_dtype}) x {len(self.train_set)} training "
                f"images x {versions} version(s) = up to {_size(total)} of CPU memory per process ({cap})")

    def _vit_features(self, images: torch.Tensor) -> Optional[ViTFeatures]:
        """Cached frozen-ViT features of a CPU batch on the training device (None: no cache)."""
        if self.feature_cache is None:
            return None
        return self.feature_cache.get(
            images, lambda x: self.model.frozen_vit_features(x.to(self.device, non_blocking=True)), self.device)

    def _build_optimizer(self) -> None:
        cfg = self.cfg
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]  # norms, biases, gates, scales
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        self.clock = _Clock(cfg.max_minutes * 60 if cfg.max_minutes else None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total_steps, cfg.warmup_steps, cfg.min_lr_ratio,
                                                self.clock.fraction))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")

    def resume(self) -> None:
        path, state, optim = ckpt.load_checkpoint(self.run_dir, rank=self.dist.rank)
        if state["rng_world_size"] != self.dist.world_size:
            raise ValueError(f"{path} was written by {state['rng_world_size']} process(es) but this run has "
                             f"{self.dist.world_size}; resume with the same number of processes")
        weights = ckpt.load_weights(path, self.run_dir)
        self.model.load_trainable_state_dict({k: v.to(self.device) for k, v in weights.items()}, source=str(path))
        self.optimizer.load_state_dict(optim["optimizer"])
        self.scheduler.load_state_dict(optim["scheduler"])
        if optim["scaler"] is not None:
            self.scaler.load_state_dict(optim["scaler"])
        ckpt.restore_rng(state.pop("rng"))
        state.pop("rng_world_size")
        state.pop("version", None)
        self.state.update(state)
        self.clock = _Clock(self.clock.budget_s, self.state["elapsed"])
        self.clock.synced = self.state["elapsed"]
        self._trim_log(self.state["epoch"])

    # ------------------------------------------------------------------ bookkeeping
    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def _start_fresh(self) -> None:
        """Replace what a start that never reached a checkpoint left (see _check_fresh)."""
        if not self.is_main:
            return
        stale = [p for p in (self.run_dir / TRAIN_CONFIG_NAME, self.run_dir / LOG_NAME) if p.exists()]
        if stale:
            print(f"note: {self.run_dir} holds no checkpoint; replacing {', '.join(p.name for p in stale)} of an "
                  "earlier start", file=sys.stderr, flush=True)
            (self.run_dir / LOG_NAME).unlink(missing_ok=True)
        self._write_config()

    def _write_config(self) -> None:
        if self.is_main:
            save_json_atomic({"train": self.cfg.to_dict(), "model": self.model.config.to_dict(),
                              "world_size": self.dist.world_size,
                              "trainable_params": sum(p.numel() for p in self.params),
                              "total_params": sum(p.numel() for p in self.model.parameters())},
                             self.run_dir / TRAIN_CONFIG_NAME)

    def _trim_log(self, epoch: int) -> None:
        """Drop log lines of epochs the resumed run will redo (written after the last checkpoint)."""
        log = self.run_dir / LOG_NAME
        if not self.is_main or not log.is_file():
            return
        lines = [ln for ln in log.read_text(encoding="utf-8").splitlines() if ln.strip()]
        keep = []
        for ln in lines:
            try:
                if json.loads(ln).get("epoch", -1) < epoch or (json.loads(ln).get("epoch") == epoch
                                                               and self.state["validated"]):
                    keep.append(ln)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
        atomic_write_text(log, "".join(k + "\n" for k in keep))

    def _log(self, entry: dict[str, Any]) -> None:
        if self.is_main:
            with open(self.run_dir / LOG_NAME, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    def _checkpoint(self) -> None:
        self.state["elapsed"] = self.clock.synced
        rng = ckpt.capture_rng()
        if self.dist.enabled:
            shards: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(shards, rng)
            rng_states = shards
        else:
            rng_states = [rng]
        if self.is_main:
            ckpt.save_checkpoint(self.run_dir, self.model, self.optimizer, self.scheduler, self.scaler,
                                 dict(self.state), rng_states)
        if self.dist.enabled:
            dist.barrier()

    def _save_best(self) -> None:
        if self.is_main:
            best = self.run_dir / BEST_DIR
            self.model.save_pretrained(best)
            save_json_atomic({"image_size": self.cfg.image_size, "knowledge": self.cfg.knowledge,
                              "caption_override": self.cfg.caption_override,
                              "threshold": self.cfg.threshold, "pretrained": self.cfg.pretrained,
                              "epoch": self.state["epoch"], "global_step": self.state["global_step"],
                              "val_dice": self.state["best_dice"]}, best / INFERENCE_NAME)

    # ------------------------------------------------------------------ loop
    def _done(self) -> bool:
        s, cfg = self.state, self.cfg
        if cfg.max_steps is not None and s["global_step"] >= cfg.max_steps:
            return True
        return self.clock.out_of_time

    def _loader(self, epoch: int, skip_batches: int) -> DataLoader:
        self.train_set.set_epoch(epoch)
        sampler = ShardedEpochSampler(len(self.train_set), seed=self.cfg.seed, epoch=epoch, rank=self.dist.rank,
                                      world_size=self.dist.world_size, skip=skip_batches * self.cfg.batch_size)
        return DataLoader(self.train_set, batch_size=self.cfg.batch_size, sampler=sampler,
                          num_workers=self.cfg.workers, collate_fn=collate,
                          pin_memory=self.device.type == "cuda")

    def _optimizer_step(self) -> None:
        if self.cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state["global_step"] += 1
        self.clock.sync()
        self.scheduler.step()

    def _train_epoch(self, epoch: int) -> None:
        from tqdm.auto import tqdm

        cfg, s = self.cfg, self.state
        n = self.batches_per_epoch
        self.net.train()
        show = cfg.progress and self.is_main and sys.stderr.isatty()
        bar = tqdm(total=n, initial=s["batches_done"], desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show,
                   leave=False)
        for batch in self._loader(epoch, s["batches_done"]):
            micro = s["batches_done"]
            window_start = micro // cfg.grad_accum * cfg.grad_accum
            window = min(cfg.grad_accum, n - window_start)
            last_in_window = micro + 1 == window_start + window
            sync = nullcontext() if (last_in_window or not self.dist.enabled) else self.net.no_sync()
            images = batch["image"].to(self.device, non_blocking=True)
            masks = batch["mask"].to(self.device, non_blocking=True)
            with sync:
                with self.amp_ctx():
                    vit = self._vit_features(batch["image"])
                    out = self.net(images, batch["caption"], return_aux=True, vit_features=vit)
                # Dice + BCE, plus whatever the config switched on (SSA losses, deep supervision)
                loss = out.loss(masks)
                self.scaler.scale(loss / window).backward()
            s["loss_sum"] += float(loss.detach())
            s["loss_count"] += 1
            s["batches_done"] = micro + 1
            s["validated"] = False
            bar.update(1)
            if not last_in_window:
                continue
            self._optimizer_step()
            bar.set_postfix(loss=f"{s['loss_sum'] / s['loss_count']:.4f}",
                            lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            if self._done():
                break
            if cfg.checkpoint_every and s["global_step"] % cfg.checkpoint_every == 0:
                self._checkpoint()
        bar.close()

    def _validate(self) -> dict[str, Any]:
        if self.val_loader is None:
            return {}
        acc, rows = run_inference(self.model, self.val_loader, self.device, amp=self.cfg.amp,
                                  threshold=self.cfg.threshold, laterality=self.model.config.laterality)
        acc.sync_distributed()
        return summarize(acc, all_gather_rows(rows), self.cfg.threshold)

    def _train_loss(self) -> Optional[float]:
        s = self.state
        total = torch.tensor([s["loss_sum"], s["loss_count"]], dtype=torch.float64)
        if self.dist.enabled:
            dist.all_reduce(total)
        return float(total[0] / total[1]) if total[1] > 0 else None

    def _cache_stats(self) -> dict[str, Any]:
        """This rank's feature-cache hit rate over the epoch and its size, for log.jsonl."""
        if self.feature_cache is None:
            return {}
        hits, misses = self.feature_cache.reset_counts()
        return {"cache_hit_rate": hits / (hits + misses) if hits + misses else None,
                "cache_images": len(self.feature_cache), "cache_gib": round(self.feature_cache.nbytes / 2**30, 4)}

    def _end_epoch(self, epoch: int, epoch_start: float) -> None:
        s, cfg = self.state, self.cfg
        complete = s["batches_done"] >= self.batches_per_epoch
        final = self._done() or (complete and epoch + 1 >= cfg.epochs)
        metrics = {}
        if (epoch + 1) % cfg.val_every == 0 or final:
            metrics = self._validate()
        improved = False
        if metrics:
            if s["best_dice"] is None or metrics["dice"] > s["best_dice"]:
                s["best_dice"], s["best_epoch"], improved = metrics["dice"], epoch, True
        elif self.val_loader is None:
            improved = True  # no validation split: best = latest
        if improved:
            self._save_best()
        entry = {"epoch": epoch, "step": s["global_step"], "train_loss": self._train_loss(),
                 "lr": self.scheduler.get_last_lr()[0], "time": round(self.clock.elapsed(), 3),
                 "epoch_time": round(time.monotonic() - epoch_start, 3)}
        entry.update({f"val_{k}": v for k, v in metrics.items()})
        entry.update(self._cache_stats())
        entry.update({"best_dice": s["best_dice"], "best_epoch": s["best_epoch"]})
        self._log(entry)
        if complete:
            s.update(epoch=epoch + 1, batches_done=0, loss_sum=0.0, loss_count=0, validated=False)
        else:
            s["validated"] = True
        self._checkpoint()
        if self.is_main and cfg.progress:
            val = f" val dice {metrics['dice']:.4f} pooled {metrics['pooled_dice']:.4f}" if metrics else ""
            loss = entry["train_loss"]
            cache = f" ViT cache hits {entry['cache_hit_rate']:.0%}" if entry.get("cache_hit_rate") is not None else ""
            print(f"epoch {epoch + 1}/{cfg.epochs} step {s['global_step']} loss "
                  f"{'n/a' if loss is None else f'{loss:.4f}'}{val}{cache} ({entry['epoch_time']:.1f}s)", flush=True)

    def run(self) -> Path:
        cfg, s = self.cfg, self.state
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.resume is not None:
            self.resume()
        else:
            self._start_fresh()
        if self.feature_cache is not None and self.is_main and cfg.progress:
            print(self._describe_feature_cache(), flush=True)
        self.clock.sync()
        while s["epoch"] < cfg.epochs:
            if self._done():
                if not s["validated"] and s["batches_done"] > 0:
                    self._end_epoch(s["epoch"], time.monotonic())
                break
            epoch, start = s["epoch"], time.monotonic()
            self._train_epoch(epoch)
            self._end_epoch(epoch, start)
        if self.is_main and cfg.progress:
            best = "n/a" if s["best_dice"] is None else f"{s['best_dice']:.4f}"
            print(f"done: {s['global_step']} steps, best val dice {best} -> {self.run_dir / BEST_DIR}", flush=True)
        return self.run_dir


def train(config: TrainConfig, model_factory: Optional[ModelFactory] = None) -> Path:
    """Train (or resume) a run; returns the run directory. Works under torchrun unchanged.

    ``model_factory(config) -> nn.Module`` trains that model instead of a TGCNet preset; its
    ``forward(images, captions)`` returns logits (B, 1, H, W). The contract, and how to
    evaluate such a run, are in tgcnet.engine.factory_model.
    """
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    owns_group = not (dist.is_available() and dist.is_initialized())
    info = setup_distributed(device)
    try:
        # rank 0 decides whether the run directory is fresh or resumable, before anyone writes to it
        resolved: Any = None
        if info.is_main:
            try:
                resolved = _resolve_config(config)[0]
            except (ValueError, FileNotFoundError) as exc:
                resolved = exc
        resolved = broadcast_object(resolved)
        if isinstance(resolved, BaseException):
            raise resolved
        return Trainer(resolved, device, info, model_factory=model_factory).run()
    finally:
        if owns_group:
            cleanup_distributed()
