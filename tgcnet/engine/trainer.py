"""Fine-tuning loop: AdamW over the trainable parameters, warmup + cosine, Dice+BCE, AMP, DDP.

One process or ``torchrun --nproc_per_node=K -m tgcnet.cli train ...``. The loop is
written so that a run killed at any point and resumed with ``--resume RUN_DIR`` ends with
the same weights as an uninterrupted run: the data order is a pure function of
(seed, epoch), augmentation of (seed, epoch, index) (see SegmentationDataset), and a
checkpoint records the optimizer, scheduler, scaler, RNG states and how many batches of
the current epoch were consumed.

What goes where in the run directory, and which process may write there, is
tgcnet.engine.run_dir's. ``train(cfg, model_factory=make)`` trains another model through
the same loop (see tgcnet.engine.factory_model). Images without a mask (``semi_supervised``,
``labelled_fraction``) train in the same batches as the others: which ones is
tgcnet.engine.labelled_split's, their losses tgcnet.engine.semi_supervised's.

Everything a run can be refused for (settings, data, model build, image size against the
patch size, amp on the device, a directory in use or holding another run) is checked
before anything is written there.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from tgcnet.data import collate
from tgcnet.model import ViTFeatures

from .distributed import (DistInfo, ShardedEpochSampler, all_gather_rows, broadcast_object, cleanup_distributed,
                          resolve_device, setup_distributed)
from .factory_model import ModelFactory, build_factory_model, build_preset_model
from .feature_cache import CACHE_DTYPES, FeatureCache, describe_cache_size
from .files import TEACHER_NAME
from .inference import autocast_context, make_loader, run_inference, summarize
from .loading import prepare_for_device
from .run_dir import RunDir
from .schedule import TrainingClock, lr_factor
from .semi_supervised import UNLABELLED_LOSSES, BatchLoss, SemiSupervision
from .train_config import TrainConfig
from .train_state import capture_rng, restore_optimizers, restore_rng, seed_rng
from .training_data import (batches_per_rank, check_image_size, check_lengths, read_training_splits,
                            training_dataset)

__all__ = ["Trainer", "train"]

#: the trainer state's per-epoch sums of the unlabelled images' losses, at an epoch's start (see _record)
_UNLABELLED_SUMS = {f"{name}_loss_{part}": zero
                    for name in UNLABELLED_LOSSES for part, zero in (("sum", 0.0), ("count", 0))}


def _resolve_config(config: TrainConfig) -> TrainConfig:
    """The config to run, once its directory allows it: a resume writes into the directory it continues."""
    RunDir(config.out if config.resume is None else config.resume).check_start(config)
    return config if config.resume is None else dataclasses.replace(config, out=str(Path(config.resume)))


def _decided_by_rank0(is_main: bool, decide: Callable[[], Any]) -> Any:
    """What rank 0's ``decide()`` returns, on every rank; if it refuses, every rank raises its error,
    instead of the others waiting for it in the next collective."""
    outcome: Any = None
    if is_main:
        try:
            outcome = decide()
        except (ValueError, OSError) as exc:
            outcome = exc
    outcome = broadcast_object(outcome)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


class Trainer:
    """One training run in one process (of possibly several under torchrun)."""

    def __init__(self, config: TrainConfig, device: torch.device, dist_info: DistInfo,
                 model_factory: Optional[ModelFactory] = None) -> None:
        self.cfg, self.device, self.dist = config, device, dist_info
        self.model_factory = model_factory
        self.dir = RunDir(config.out)
        self.amp_ctx = lambda: autocast_context(device, config.amp)
        seed_rng(config.seed)  # identical trainable init on every rank
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        autocast_context(device, config.amp)  # refuses fp16 on the CPU now, not at the first batch
        self.splits = read_training_splits(config, self.dir)  # a bad data set fails before a model is built
        self.labelled = self.splits.labelled
        self._build_model()
        check_image_size(self.model.patch_size, config)
        self._build_data()  # after the model: captions are checked against its text context
        self.semi = SemiSupervision(config, self.model) if config.semi_supervised else None
        self.feature_cache = None if not config.cache_image_features else FeatureCache(
            CACHE_DTYPES[config.cache_dtype],
            max_bytes=None if config.cache_max_gb is None else int(config.cache_max_gb * 2**30))
        seed_rng(config.seed + 1000 * dist_info.rank)
        self._build_optimizer()
        self.state: dict[str, Any] = {"epoch": 0, "batches_done": 0, "global_step": 0, "best_dice": None,
                                      "best_epoch": None, "validated": False, "loss_sum": 0.0, "loss_count": 0,
                                      **_UNLABELLED_SUMS, "elapsed": 0.0}

    # ------------------------------------------------------------------ setup
    def _build_data(self) -> None:
        cfg = self.cfg
        triples = check_lengths(self.model, self.splits, cfg)
        self.train_set = training_dataset(triples["train"], cfg)
        self.val_loader = None
        if "val" in triples:
            self.val_loader = make_loader(triples["val"], cfg.image_size, cfg.eval_batch_size or cfg.batch_size,
                                          cfg.workers, self.dist.rank, self.dist.world_size,
                                          pin_memory=self.device.type == "cuda")
        self.batches_per_epoch = batches_per_rank(len(self.train_set), cfg.batch_size, self.dist.rank,
                                                  self.dist.world_size)
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
            self.model = build_preset_model(cfg)
        self.model = prepare_for_device(self.model, self.device, amp=cfg.amp)  # every forward runs under amp_ctx
        self.params = [p for p in self.model.trainable_parameters()]
        if not self.params:
            raise ValueError(f"preset {cfg.preset!r} has no trainable parameters")
        self.net: torch.nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DDP(self.model, device_ids=ids, find_unused_parameters=cfg.find_unused_parameters)

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
        self.clock = TrainingClock(cfg.max_minutes * 60 if cfg.max_minutes else None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total_steps, cfg.warmup_steps, cfg.min_lr_ratio,
                                                self.clock.fraction))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")

    def resume(self) -> None:
        path, state, optim = self.dir.load_checkpoint(rank=self.dist.rank, world_size=self.dist.world_size)
        weights = self.dir.load_weights(path)
        self.model.load_trainable_state_dict({k: v.to(self.device) for k, v in weights.items()}, source=str(path))
        restore_optimizers(optim, self.optimizer, self.scheduler, self.scaler)
        if self.semi is not None and self.semi.teacher is not None:
            teacher = self.dir.load_teacher(path)
            self.semi.teacher.load_state_dict({k: v.to(self.device) for k, v in teacher.items()},
                                              source=str(path / TEACHER_NAME))
        restore_rng(state.pop("rng"))
        self.state.update(state)
        self.clock = TrainingClock(self.clock.budget_s, self.state["elapsed"])
        self.clock.synced = self.state["elapsed"]
        if self.is_main:
            self.dir.trim_log(self.state["epoch"], keep_epoch=self.state["validated"])

    # ------------------------------------------------------------------ bookkeeping
    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def run_dir(self) -> Path:
        return self.dir.path

    def _checkpoint(self) -> None:
        self.state["elapsed"] = self.clock.synced
        rng = capture_rng()
        rng_states: list[Any] = [rng]
        if self.dist.enabled:
            rng_states = [None] * self.dist.world_size
            dist.all_gather_object(rng_states, rng)
        if self.is_main:
            teacher = None if self.semi is None or self.semi.teacher is None else self.semi.teacher.state_dict()
            self.dir.save_checkpoint(self.model, self.optimizer, self.scheduler, self.scaler, dict(self.state),
                                     rng_states, teacher)
        if self.dist.enabled:
            dist.barrier()

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
        if self.semi is not None:
            self.semi.after_step(self.model, self.state["global_step"])
        self.clock.sync()
        self.scheduler.step()

    def _progress(self) -> float:
        """The fraction of training done, as the LR schedule counts it (steps, or the time budget)."""
        return min(1.0, max(self.state["global_step"] / max(1, self.total_steps), self.clock.fraction))

    def _batch_loss(self, images: torch.Tensor, batch: dict[str, Any]) -> BatchLoss:
        """Forward the batch and return its loss; images without a mask go to the semi-supervised losses."""
        masks = batch["mask"].to(self.device, non_blocking=True)
        captions, labelled = batch["caption"], batch["labelled"]
        teacher = None
        with self.amp_ctx():
            vit = self._vit_features(batch["image"])
            if self.semi is not None and self.semi.teacher is not None and not bool(labelled.all()):
                if vit is None and hasattr(self.model, "frozen_vit_features"):
                    vit = self.model.frozen_vit_features(images)  # once for the teacher and the student
                teacher = self.semi.teacher_probabilities(self.model, images, captions, labelled, vit)
            out = self.net(images, captions, return_aux=True, vit_features=vit)
        if self.semi is None:
            # Dice + BCE, plus whatever the config switched on (SSA losses, deep supervision)
            return BatchLoss(out.loss(masks))
        return self.semi.batch_loss(out, masks, labelled, captions, teacher, self._progress())

    def _record(self, loss: BatchLoss) -> None:
        s = self.state
        s["loss_sum"] += float(loss.total.detach())
        s["loss_count"] += 1
        for name in UNLABELLED_LOSSES:
            if (value := getattr(loss, name)) is not None:
                s[f"{name}_loss_sum"] += value
                s[f"{name}_loss_count"] += 1

    def _train_epoch(self, epoch: int) -> None:
        from tqdm.auto import tqdm

        cfg, s, n = self.cfg, self.state, self.batches_per_epoch
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
            with sync:
                loss = self._batch_loss(images, batch)
                self.scaler.scale(loss.total / window).backward()
            self._record(loss)
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

    def _epoch_mean(self, name: str) -> Optional[float]:
        """The epoch's mean of ``<name>_sum`` over ``<name>_count``, over every rank (None: no batch had it)."""
        s = self.state
        total = torch.tensor([s[f"{name}_sum"], s[f"{name}_count"]], dtype=torch.float64)
        if self.dist.enabled:
            dist.all_reduce(total)
        return float(total[0] / total[1]) if total[1] > 0 else None

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
        if improved and self.is_main:
            self.dir.save_best(self.model, cfg, epoch=s["epoch"], global_step=s["global_step"], val_dice=s["best_dice"])
        entry = {"epoch": epoch, "step": s["global_step"], "train_loss": self._epoch_mean("loss"),
                 "lr": self.scheduler.get_last_lr()[0], "time": round(self.clock.elapsed(), 3),
                 "epoch_time": round(time.monotonic() - epoch_start, 3)}
        if self.semi is not None:  # unweighted means over the batches that had unlabelled images
            entry.update({f"train_{name}_loss": self._epoch_mean(f"{name}_loss") for name in UNLABELLED_LOSSES})
        entry.update({f"val_{k}": v for k, v in metrics.items()})
        entry.update({} if self.feature_cache is None else self.feature_cache.epoch_stats())
        entry.update({"best_dice": s["best_dice"], "best_epoch": s["best_epoch"]})
        if self.is_main:
            self.dir.append_log(entry)
        if complete:
            s.update(epoch=epoch + 1, batches_done=0, loss_sum=0.0, loss_count=0, validated=False,
                     **_UNLABELLED_SUMS)
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
        """Train to the end (or resume and train to the end); the run directory is held meanwhile."""
        _decided_by_rank0(self.is_main, lambda: self.dir.claim(new_run=self.cfg.resume is None))  # rank 0 writes
        try:
            self._run()
        finally:
            self.dir.unlock()
        return self.run_dir

    def _run(self) -> None:
        cfg, s = self.cfg, self.state
        if cfg.resume is not None:
            self.resume()
        elif self.is_main:
            self.dir.start(cfg, self.model, self.dist.world_size,
                           labelled=None if self.labelled is None else self.labelled.to_dict())
        if self.labelled is not None and self.is_main:
            print(self.labelled.describe(), file=sys.stderr, flush=True)
        if self.feature_cache is not None and self.is_main and cfg.progress:
            print(describe_cache_size(self.model, cfg.image_size, cfg.cache_dtype, len(self.train_set),
                                      2 if cfg.augment == "flip" else 1, cfg.cache_max_gb), flush=True)
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
            print(f"done: {s['global_step']} steps, best val dice {best} -> {self.dir.best}", flush=True)


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
        resolved = _decided_by_rank0(info.is_main, lambda: _resolve_config(config))
        return Trainer(resolved, device, info, model_factory=model_factory).run()
    finally:
        if owns_group:
            cleanup_distributed()
