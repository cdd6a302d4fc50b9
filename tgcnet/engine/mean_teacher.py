"""The teacher behind the pseudo-labels of images without a mask: an exponential moving average
of the trained weights (mean teacher), and the ramp that phases its loss in.

Why a weight EMA and not LViT's exponential pseudo-label iteration (a moving average of each
unlabelled image's own predictions, refreshed whenever the image comes round):

* **torchrun.** Each rank sees other images each epoch, so a per-image prediction store
  would be updated by whichever rank drew the image and would have to be gathered across
  ranks after every step to stay one store. The weight EMA is updated from weights DDP has
  already made identical, so every rank holds the same teacher without communication.
* **resume.** The weight EMA is one tensor per trainable parameter, written to the
  checkpoint beside the weights (``last/teacher.safetensors``); a per-image store grows
  with the data set (an image-sized map per unlabelled image) and would be most of every
  checkpoint.
* **augmentation.** A stored prediction belongs to the augmented view it was made on
  (flipped, shifted); the teacher predicts on the very view the student sees.

An exponential pseudo-label iteration could be added later as another teacher with the same
``probabilities`` interface, if a measurement favours it.

The teacher predicts in eval mode (no dropout) with the student's frozen parts and
buffers; only the trainable parameters are averaged. Its decay warms up as in Tarvainen &
Valpola (2017): ``min(decay, 1 - 1 / (step + 1))`` after optimizer step ``step``, so early
teachers are not stuck near the random start. Everything is a pure function of the steps
taken, so a resumed run continues it exactly.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import nn

__all__ = ["MeanTeacher", "rampup_weight"]


def rampup_weight(progress: float, rampup_fraction: float) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = min(1, progress / rampup_fraction)``: the sigmoid-shaped ramp of
    Laine & Aila (2017) from 0.0067 to 1 over the first ``rampup_fraction`` of training (0: always 1).

    ``progress`` is the fraction of training done (steps, or the time budget's fraction).
    The pseudo-labels of an untrained teacher are noise; the ramp lets the masks teach first.
    """
    if not 0 <= rampup_fraction <= 1:
        raise ValueError(f"rampup_fraction must be in [0, 1], got {rampup_fraction}")
    if rampup_fraction == 0:
        return 1.0
    t = min(1.0, max(0.0, progress) / rampup_fraction)
    return math.exp(-5.0 * (1.0 - t) ** 2)


class MeanTeacher:
    """An EMA copy of a model's trainable parameters, and predictions made with it.

    ``model`` is the unwrapped model (not its DDP wrapper); the teacher starts as a copy of
    its current trainable weights.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    def decay_at(self, step: int) -> float:
        """The EMA decay after optimizer step ``step`` (1 for the first step): warmed up, then ``decay``."""
        return min(self.decay, 1.0 - 1.0 / (step + 1))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """``teacher = d * teacher + (1 - d) * student`` after optimizer step ``step``."""
        weight = 1.0 - self.decay_at(step)
        params = dict(model.named_parameters())
        for name, shadow in self.shadow.items():
            shadow.lerp_(params[name].detach().to(shadow.dtype), weight)

    @contextmanager
    def _weights_in(self, model: nn.Module) -> Iterator[None]:
        """The model carrying the teacher's weights, then its own again, bit for bit.

        Copied in and out rather than swapped by reference: caches keyed on a parameter's
        version (tgcnet.date's text encodings) then see the change, and DDP's references
        to the parameters stay valid.
        """
        params = dict(model.named_parameters())
        own = {name: params[name].detach().clone() for name in self.shadow}
        with torch.no_grad():
            for name, shadow in self.shadow.items():
                params[name].copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, saved in own.items():
                    params[name].copy_(saved)

    @torch.no_grad()
    def probabilities(self, model: nn.Module, images: torch.Tensor, captions: Sequence[str],
                      vit_features: Optional[Any] = None) -> torch.Tensor:
        """The teacher's foreground probabilities (B, 1, H, W), float32, in eval mode; the model
        returns to training mode with its own weights."""
        kwargs = {} if vit_features is None else {"vit_features": vit_features}
        model.eval()
        try:
            with self._weights_in(model):
                logits = model(images, list(captions), **kwargs)
        finally:
            model.train()
        return torch.sigmoid(logits.float())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Take a checkpoint's teacher; one that does not fit the model is a ValueError naming ``source``."""
        missing, unexpected = sorted(set(self.shadow) - set(state)), sorted(set(state) - set(self.shadow))
        wrong = [k for k in self.shadow if k in state and state[k].shape != self.shadow[k].shape]
        if missing or unexpected or wrong:
            raise ValueError(f"{source} does not fit this model's trainable parameters (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}, other shape {wrong[:3]})")
        for name, shadow in self.shadow.items():
            shadow.copy_(state[name])
