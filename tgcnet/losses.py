"""Training losses: Dice + BCE for the mask, and SSA's auxiliary terms.

Every loss here runs in float32 with autocast switched off: sums over 224x224 pixels
in bf16 keep only about three significant digits, enough to make a small Dice
improvement invisible to the optimiser.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .ot import symmetric_ot_alignment

__all__ = ["dice_loss", "dice_bce_loss", "deep_supervision_loss", "ot_alignment_loss", "guidance_outside_loss"]


def _as_float32_pair(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes ((B,1,H,W) logits, (B,1,H,W) or (B,H,W) target) and cast to float32."""
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits must have shape (B, 1, H, W), got {tuple(logits.shape)}")
    if target.dim() == 3:
        target = target.unsqueeze(1)
    if target.shape != logits.shape:
        raise ValueError(f"target must have shape {tuple(logits.shape)} (or without the channel axis), "
                         f"got {tuple(target.shape)}")
    return logits.float(), target.float()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per image, averaged over the batch.

    Per-image (not pooled) so that small lesions count as much as large ones, matching the
    per-image mean Dice we report. ``eps`` is added to numerator and denominator so an
    image whose target and prediction are both empty scores a loss of 0, not 0/0.

    Args:
        logits: (B, 1, H, W) raw mask logits.
        target: (B, 1, H, W) or (B, H, W) in {0, 1} (soft labels in [0, 1] also work).
        eps: smoothing, in pixels.
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0 so empty masks stay finite, got {eps}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits, target = _as_float32_pair(logits, target)
        probs = torch.sigmoid(logits)
        dims = (1, 2, 3)
        inter = (probs * target).sum(dims)
        denom = probs.sum(dims) + target.sum(dims)
        return (1.0 - (2.0 * inter + eps) / (denom + eps)).mean()


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0,
                  bce_weight: float = 1.0, eps: float = 1.0) -> torch.Tensor:
    """``dice_weight * Dice + bce_weight * BCE``, the usual text-guided segmentation loss.

    Dice drives overlap on small lesions, BCE gives a well-conditioned per-pixel gradient
    early in training when Dice is flat.
    """
    if dice_weight < 0 or bce_weight < 0:
        raise ValueError(f"dice_weight and bce_weight must be >= 0, got {dice_weight}, {bce_weight}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits32, target32 = _as_float32_pair(logits, target)
        bce = F.binary_cross_entropy_with_logits(logits32, target32)
        return dice_weight * dice_loss(logits32, target32, eps=eps) + bce_weight * bce


def deep_supervision_loss(side_logits: list[torch.Tensor], target: torch.Tensor, dice_weight: float = 1.0,
                          bce_weight: float = 1.0) -> torch.Tensor:
    """Dice + BCE (weighted as :func:`dice_bce_loss`) of each decoder level's own mask logits,
    upsampled to the target, averaged over levels.

    The logits are upsampled rather than the mask downsampled, so a small lesion that would vanish
    at a coarse level's resolution still counts there.
    """
    if not side_logits:
        raise ValueError("deep_supervision_loss needs at least one level's logits")
    size = target.shape[-2:]
    return torch.stack([dice_bce_loss(F.interpolate(s.float(), size=size, mode="bilinear", align_corners=False),
                                      target, dice_weight, bce_weight) for s in side_logits]).mean()


def ot_alignment_loss(region_feats: torch.Tensor, token_feats: torch.Tensor,
                      token_mask: torch.Tensor | None = None, region_mask: torch.Tensor | None = None,
                      epsilon: float = 0.05, n_iters: int = 50, detach_plan: bool = True) -> torch.Tensor:
    """The symmetric OT transport cost as a scalar loss; see :func:`tgcnet.ot.symmetric_ot_alignment`.

    region_feats (B, N, D) and token_feats (B, M, D) must live in the same joint space
    (e.g. flattened dense visual embeddings and projected text tokens).
    """
    return symmetric_ot_alignment(region_feats, token_feats, token_mask, region_mask, epsilon=epsilon,
                                  n_iters=n_iters, detach_plan=detach_plan).loss


def guidance_outside_loss(logits: torch.Tensor, guidance: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Fraction of predicted foreground mass lying outside the guidance mask, per image, averaged.

    A differentiable version of the side error: it penalises exactly the mistake SSA
    targets ("left lower lung" predicted on both sides). ``guidance`` is (B, 1, h, w) in
    [0, 1], e.g. from :func:`tgcnet.guidance.guidance_masks`; it is resized bilinearly to
    the logits' size when they differ. ``eps`` keeps empty predictions at a loss of ~0.
    """
    if guidance.dim() != 4 or guidance.shape[1] != 1 or guidance.shape[0] != logits.shape[0]:
        raise ValueError(f"guidance must have shape (B, 1, h, w) with B={logits.shape[0]}, got {tuple(guidance.shape)}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits32, _ = _as_float32_pair(logits, torch.zeros_like(logits))
        guidance = guidance.to(device=logits.device, dtype=torch.float32)
        if guidance.shape[-2:] != logits32.shape[-2:]:
            guidance = F.interpolate(guidance, size=logits32.shape[-2:], mode="bilinear", align_corners=False)
        probs = torch.sigmoid(logits32)
        outside = (probs * (1.0 - guidance.clamp(0, 1))).sum((1, 2, 3))
        return (outside / (probs.sum((1, 2, 3)) + eps)).mean()
