"""A training batch's loss when some of its images have no mask.

One loader serves every training image; an item says whether it is ``labelled``, and an
unlabelled item's mask is all zeros (tgcnet.data.SegmentationDataset). So the data order,
its sharding over ranks and its resume are the supervised run's, and labelled and
unlabelled images share each batch in whatever proportion the seeded order draws. The loss:

* **supervised**, over the labelled images only: the model's own training loss (Dice + BCE,
  deep supervision) averaged over them, plus its auxiliary losses (SSA), which need no mask
  and so count every image. A batch without a labelled image has no mask term, not a NaN.
* **pseudo-label** (``pseudo_label_weight``), over the unlabelled images:
  :func:`tgcnet.losses.pseudo_label_loss` of the student against the mean teacher
  (tgcnet.engine.mean_teacher), ramped in by :func:`~tgcnet.engine.mean_teacher.rampup_weight`.
* **language** (``language_loss_weight``), over the unlabelled images:
  :func:`tgcnet.losses.language_guided_loss`, what their captions' location words say: no
  lesion on the sides they do not name, some lesion on the sides they do. Ramped in like
  the pseudo-labels. The "some lesion" term matters: without it the cheapest answer to a
  bound is an empty map, and an earlier version without it (the share of foreground
  outside the named sides, plus the count below) drove every prediction empty within the
  first epoch on qata-mini.
* **count** (``count_loss_weight``), over the unlabelled images whose caption counts its
  infected areas: :func:`tgcnet.losses.region_count_loss` on 8 x 8-pixel cells
  (:data:`tgcnet.losses.COUNT_POOL`), no more regions than the areas counted. Ramped in too.

The per-batch values of the three unlabelled losses (unweighted) go to log.jsonl as epoch means.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import nn

from tgcnet.caption_counts import stated_area_count
from tgcnet.losses import COUNT_POOL, language_guided_loss, pseudo_label_loss, region_count_loss
from tgcnet.model import TGCNetOutput

from .mean_teacher import MeanTeacher, rampup_weight
from .train_config import TrainConfig

__all__ = ["UNLABELLED_LOSSES", "BatchLoss", "SemiSupervision", "supervised_loss"]

#: the unlabelled images' losses, as BatchLoss fields and log.jsonl's ``train_<name>_loss``
UNLABELLED_LOSSES = ("pseudo_label", "language", "count")


@dataclass
class BatchLoss:
    """The loss to backpropagate, and the unlabelled losses' unweighted values for the log
    (None when the batch had no unlabelled image or the loss is off)."""

    total: torch.Tensor
    pseudo_label: Optional[float] = None
    language: Optional[float] = None
    count: Optional[float] = None


def _untouched_zero(out: TGCNetOutput) -> torch.Tensor:
    """A zero that depends on every output, so that under DDP every parameter that ran gets a
    gradient (zero) even when no loss term used it, as DDP without find_unused_parameters needs."""
    return 0.0 * (out.logits.float().sum() + sum(s.float().sum() for s in out.side_logits))


def _rows(flags: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Indices of the True entries of a (B,) bool tensor, on ``device`` (flags stay on the CPU: no sync)."""
    return flags.cpu().nonzero().squeeze(1).to(device)


def supervised_loss(out: TGCNetOutput, masks: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """The model's training loss (``out.loss``) over the labelled images of the batch.

    All labelled: exactly ``out.loss(masks)``, as without semi-supervised training. None
    labelled: the auxiliary losses only (they need no mask).
    """
    if bool(labelled.all()):
        return out.loss(masks)
    zero = _untouched_zero(out)
    if not bool(labelled.any()):
        return zero + sum(out.aux_losses.values())
    rows = _rows(labelled, out.logits.device)
    part = dataclasses.replace(out, logits=out.logits[rows], side_logits=[s[rows] for s in out.side_logits])
    return part.loss(masks[rows]) + zero


def _rows_of(vit_features: Any, rows: torch.Tensor) -> Any:
    """Frozen-ViT features (maps, dense) of the batch's ``rows``."""
    if vit_features is None:
        return None
    maps, dense = vit_features
    return [m[rows] for m in maps], dense[rows]


class SemiSupervision:
    """The unlabelled images' share of training: the mean teacher and the batch loss.

    ``model`` is the unwrapped model; the teacher exists only when the pseudo-label loss is on.
    """

    def __init__(self, config: TrainConfig, model: nn.Module) -> None:
        self.cfg = config
        self.laterality = model.config.laterality
        self.teacher = MeanTeacher(model, config.ema_decay) if config.pseudo_label_weight > 0 else None

    def teacher_probabilities(self, model: nn.Module, images: torch.Tensor, captions: Sequence[str],
                              labelled: torch.Tensor, vit_features: Any = None) -> Optional[torch.Tensor]:
        """The teacher's probabilities of the batch's unlabelled images (None: none, or no teacher)."""
        if self.teacher is None or bool(labelled.all()):
            return None
        rows = _rows(~labelled, images.device)
        return self.teacher.probabilities(model, images[rows], [captions[i] for i in rows.tolist()],
                                          _rows_of(vit_features, rows))

    def batch_loss(self, out: TGCNetOutput, masks: torch.Tensor, labelled: torch.Tensor, captions: Sequence[str],
                   teacher_probs: Optional[torch.Tensor], progress: float) -> BatchLoss:
        """The batch's loss (see the module docstring); ``progress`` is the fraction of training done."""
        total = supervised_loss(out, masks, labelled)
        if bool(labelled.all()):
            return BatchLoss(total)
        rows = _rows(~labelled, out.logits.device)
        logits = out.logits[rows]
        result = BatchLoss(total)
        ramp = rampup_weight(progress, self.cfg.rampup_fraction)
        for name, (weight, loss) in self._unlabelled_losses(logits, [captions[i] for i in rows.tolist()],
                                                            teacher_probs).items():
            result.total = result.total + weight * ramp * loss
            setattr(result, name, float(loss.detach()))
        return result

    def _unlabelled_losses(self, logits: torch.Tensor, captions: list[str], teacher_probs: Optional[torch.Tensor]
                           ) -> dict[str, tuple[float, torch.Tensor]]:
        """Each switched-on loss of the unlabelled images (``logits``), with its weight, by name."""
        cfg, losses = self.cfg, {}
        if cfg.pseudo_label_weight > 0 and teacher_probs is not None:
            losses["pseudo_label"] = (cfg.pseudo_label_weight,
                                      pseudo_label_loss(logits, teacher_probs, cfg.pseudo_label_threshold))
        if cfg.language_loss_weight > 0:
            losses["language"] = cfg.language_loss_weight, language_guided_loss(logits, captions, self.laterality)
        if cfg.count_loss_weight > 0:
            counts = [stated_area_count(c) for c in captions]
            losses["count"] = cfg.count_loss_weight, region_count_loss(logits, counts, pool=COUNT_POOL)
        return losses

    def after_step(self, model: nn.Module, step: int) -> None:
        """Move the teacher towards the weights of optimizer step ``step``."""
        if self.teacher is not None:
            self.teacher.update(model, step)
