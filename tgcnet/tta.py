"""Test-time augmentation: the flipped image, with its caption's sides swapped, averaged in.

A horizontal flip moves a left-lung lesion to the right half, so the flipped image is only a
second view of the same case when its caption moves with it: "lower left lung" becomes "lower
right lung" (:func:`tgcnet.laterality.swap_left_right`, the rule the flip augmentation trains
with). The model's logits for the flipped pair are flipped back and averaged with those of the
original pair, which cancels the part of the prediction that is not mirror-consistent.

    from tgcnet.tta import tta_logits
    logits = tta_logits(model, images, captions, tta="flip")   # (B, 1, H, W), two forward passes

Any model with ``forward(images, captions) -> (B, 1, H, W)`` logits works (TGCNet, or a model
trained through ``train(cfg, model_factory=...)``). ``"none"`` is one plain forward pass.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from tgcnet.laterality import swap_left_right

if TYPE_CHECKING:   # torch is imported where it is used, so the CLI can name the modes without loading it
    import torch

__all__ = ["TTA_MODES", "check_tta", "tta_logits"]

#: the test-time augmentations: none (one pass) or flip (two passes, averaged logits)
TTA_MODES: tuple[str, ...] = ("none", "flip")


def check_tta(tta: str) -> str:
    """``tta`` if it is one of :data:`TTA_MODES`, else a ValueError naming them."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}; got {tta!r}")
    return tta


def tta_logits(model: torch.nn.Module, images: torch.Tensor, captions: Sequence[str],
               tta: str = "none") -> torch.Tensor:
    """The model's logits for ``images`` and ``captions``, averaged over the views ``tta`` names.

    Logits, not probabilities, are averaged, so the result is still a logit map: thresholding
    it at 0 is thresholding the geometric mean of the two views' odds at 1.
    """
    import torch

    check_tta(tta)
    logits = model(images, captions)
    if tta == "none":
        return logits
    flipped = model(torch.flip(images, dims=(-1,)), [swap_left_right(c) for c in captions])
    return (logits.float() + torch.flip(flipped.float(), dims=(-1,))) / 2
