"""Training losses: Dice + BCE for the mask, SSA's auxiliary terms, and the losses of images without a mask.

Every loss here runs in float32 with autocast switched off: sums over 224x224 pixels
in bf16 keep only about three significant digits, enough to make a small Dice
improvement invisible to the optimiser.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .caption_counts import stated_area_count, stated_count_word
from .guidance import guidance_masks, parse_location
from .laterality import DEFAULT_LATERALITY, Laterality
from .ot import symmetric_ot_alignment

__all__ = ["dice_loss", "dice_bce_loss", "deep_supervision_loss", "ot_alignment_loss", "guidance_outside_loss",
           "pseudo_label_loss", "soft_euler_characteristic", "region_count_loss", "known_background_loss",
           "presence_loss", "language_guided_loss", "COUNT_BAND", "COUNT_POOL", "LANGUAGE_SIDE_SOFT", "PRESENCE_FRACTION"]

#: width of the probability band around 0.5 in which :func:`region_count_loss` is soft (see there)
COUNT_BAND = 0.5
#: the ramp across the midline of :func:`language_guided_loss`'s side mask, as a fraction of the width
LANGUAGE_SIDE_SOFT = 0.1
#: the cell :func:`region_count_loss` counts regions on in training: 8 x 8 pixels, 0.13% of a
#: 224 x 224 image, a third of the smallest lesion in qata-mini's training masks
COUNT_POOL = 8
#: the share of the image :func:`presence_loss` asks to be lesion where a caption says one is: 0.5%,
#: below all but the smallest 1% of lesions in qata-mini's training masks (the smallest is 0.4% of
#: the image, the median 11%), so it claims no more than a caption's "infected area" means
PRESENCE_FRACTION = 0.005


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


# --------------------------------------------------------------------------- images without a mask

def pseudo_label_loss(logits: torch.Tensor, teacher_probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """BCE of ``logits`` against the teacher's hard labels (p > 0.5), over the pixels where the
    teacher is confident, ``|p - 0.5| > threshold``; averaged over those pixels (pooled over the batch).

    Hard labels on confident pixels only: where the teacher hesitates its label is a coin toss,
    and training on it would teach the student the teacher's noise. No confident pixel gives 0.
    """
    if not 0 <= threshold < 0.5:
        raise ValueError(f"threshold must be in [0, 0.5), got {threshold}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits32, probs = _as_float32_pair(logits, teacher_probs)
        probs = probs.detach()
        confident = ((probs - 0.5).abs() > threshold).float()
        bce = F.binary_cross_entropy_with_logits(logits32, (probs > 0.5).float(), reduction="none")
        return (bce * confident).sum() / confident.sum().clamp(min=1.0)


def soft_euler_characteristic(probs: torch.Tensor) -> torch.Tensor:
    """Euler characteristic (4-connected foreground) of each map (B, 1, H, W) in [0, 1], as (B,).

    Gray's quad count over the 2x2 quads of the zero-padded map: E = (Q1 - Q3 + 2 QD) / 4,
    where Q1 counts quads with exactly one foreground pixel, Q3 with three and QD the two
    diagonal pairs. Each count is written with products of p and 1 - p of the quad's four
    pixels, i.e. its probability if the pixels were independent Bernoulli(p): the result is
    the expected Euler characteristic, differentiable in p, and on a binary map exactly
    #components - #holes (holes of the 8-connected background).
    """
    if probs.dim() != 4 or probs.shape[1] != 1:
        raise ValueError(f"probs must have shape (B, 1, H, W), got {tuple(probs.shape)}")
    with torch.autocast(device_type=probs.device.type, enabled=False):
        x = F.pad(probs.float(), (1, 1, 1, 1))
        a, b, c, d = x[..., :-1, :-1], x[..., :-1, 1:], x[..., 1:, :-1], x[..., 1:, 1:]  # TL, TR, BL, BR
        na, nb, nc, nd = 1 - a, 1 - b, 1 - c, 1 - d
        q1 = a * nb * nc * nd + na * b * nc * nd + na * nb * c * nd + na * nb * nc * d
        q3 = na * b * c * d + a * nb * c * d + a * b * nc * d + a * b * c * nd
        qd = a * d * nb * nc + b * c * na * nd
        return (q1 - q3 + 2 * qd).sum((1, 2, 3)) / 4


def region_count_loss(logits: torch.Tensor, counts: Sequence[Optional[int]], pool: int = 1) -> torch.Tensor:
    """``log(1 + relu(E - n))`` per image whose caption states ``n`` areas, averaged over those images;
    0 when none states a count (None entries bound nothing).

    ``E`` is :func:`soft_euler_characteristic` of the probabilities first mapped through a
    linear ramp, ``q = clamp((p - 0.5) / COUNT_BAND + 0.5, 0, 1)``: pixels below 0.25 count
    as background and above 0.75 as foreground, exactly, so ``E`` is the Euler characteristic
    of the prediction thresholded at 0.5 whenever it is confident, and soft only in between.
    On the raw map, independent low probabilities add up (50,000 background pixels at
    p = 0.01 have an expected Euler characteristic near 500), so the bound would be active on
    every image and only push the background down. The log keeps an untrained model's
    thousands of soft regions (E is about 3,200 for p = 0.5 at 224 px) from outweighing the
    mask losses. E counts regions minus holes, so a hole lowers it as a removed region does:
    the bound is on that difference (no sum over quads counts regions alone). Captions count
    zones rather than regions (see tgcnet.caption_counts), so only an excess is penalised.

    ``pool`` > 1 counts on the probabilities averaged over ``pool`` x ``pool`` cells
    (:data:`COUNT_POOL` in training): at full resolution every pixel flickering across 0.5
    is a region of its own, and the cheapest way to remove those is to lower every pixel,
    lesion included; a cell is smaller than the smallest lesion, so no lesion is cut in two.
    """
    if pool < 1:
        raise ValueError(f"pool must be >= 1, got {pool}")
    if len(counts) != logits.shape[0]:
        raise ValueError(f"counts has {len(counts)} entries but logits has batch size {logits.shape[0]}")
    rows = [i for i, n in enumerate(counts) if n is not None]
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits32, _ = _as_float32_pair(logits, torch.zeros_like(logits))
        if not rows:
            return logits32.sum() * 0.0
        index = torch.tensor(rows, device=logits32.device)
        probs = torch.sigmoid(logits32[index])
        if pool > 1:
            probs = F.avg_pool2d(probs, pool, ceil_mode=True)
        q = ((probs - 0.5) / COUNT_BAND + 0.5).clamp(0, 1)
        bound = torch.tensor([float(counts[i]) for i in rows], device=logits32.device)
        return torch.log1p(F.relu(soft_euler_characteristic(q) - bound)).mean()


def known_background_loss(logits: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """BCE towards 0 over the pixels a caption rules out, weighted by ``background`` (B, 1, H, W) in
    [0, 1] and averaged per image over that weight; the mean over images that rule out any pixel
    (0 when none does).

    Unlike :func:`guidance_outside_loss`, a ratio that an empty map also minimises, it leaves
    the pixels the caption allows untouched: it says where the lesion is not, never that the
    lesion is small.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits32, background = _as_float32_pair(logits, background)
        weight = background.sum((1, 2, 3))
        bce = F.softplus(logits32) * background            # BCE with target 0
        per_image = bce.sum((1, 2, 3)) / weight.clamp(min=1.0)
        ruled_out = (weight > 0).float()
        return (per_image * ruled_out).sum() / ruled_out.sum().clamp(min=1.0)


def presence_loss(logits: torch.Tensor, region: torch.Tensor, present: Sequence[bool],
                  fraction: float = PRESENCE_FRACTION) -> torch.Tensor:
    """BCE towards 1 of the ``fraction`` of pixels with the highest logits inside ``region``
    (B, 1, H, W; pixels above 0.5 are inside), for each image whose caption says a lesion is
    there; averaged over those images (0 when none is).

    The multiple-instance reading of "an infected area in the left lung": some pixels of the
    left lung are lesion, which pixels is left to the model. It keeps the map of an image
    without a mask from going empty, the cheapest answer to any loss that only rules lesion out.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if len(present) != logits.shape[0]:
        raise ValueError(f"present has {len(present)} entries but logits has batch size {logits.shape[0]}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits32, region = _as_float32_pair(logits, region)
        rows = [i for i, p in enumerate(present) if p]
        if not rows:
            return logits32.sum() * 0.0
        h, w = logits32.shape[-2:]
        k = max(1, round(fraction * h * w))
        losses = []
        for i in rows:
            inside = logits32[i].flatten()[region[i].flatten() > 0.5]
            top = inside.topk(min(k, inside.numel())).values if inside.numel() else logits32[i].flatten().topk(k).values
            losses.append(F.softplus(-top).mean())   # BCE with target 1
        return torch.stack(losses).mean()


def _states_a_lesion(caption: str) -> bool:
    """True when a caption says there is something to find: a count other than "no", or a side."""
    count = stated_count_word(caption)
    if count == "no":
        return False
    return count is not None or not parse_location(caption).everywhere


def language_guided_loss(logits: torch.Tensor, captions: Sequence[str],
                         laterality: Laterality = DEFAULT_LATERALITY) -> torch.Tensor:
    """What a caption's location words say against a prediction, as two terms of equal weight:

    * :func:`known_background_loss` on the sides the caption does not name (the whole image
      for "no infected areas"): lesion there is wrong;
    * :func:`presence_loss` inside the named sides, when the caption names a side or a count
      above zero: some lesion there is right.

    The count of areas a caption states is a separate term, :func:`region_count_loss`, with
    its own weight. Sides only, not zones: sides hold about 95% of the lesion mass on
    QaTa-COV19, zones about 64% (see tgcnet.guidance), so a zone bound would rule out a third
    of true lesions. The side mask ramps across the midline over ``LANGUAGE_SIDE_SOFT`` of
    the width; a caption naming no side rules nothing out (its mask is all ones).
    """
    if isinstance(captions, str) or len(captions) != logits.shape[0]:
        raise ValueError(f"captions must be a sequence of {logits.shape[0]} str, one per image")
    h, w = logits.shape[-2:]
    allowed = guidance_masks(captions, h, w, laterality=laterality, soft=LANGUAGE_SIDE_SOFT, use_zones=False,
                             device=logits.device)
    none_there = torch.tensor([stated_area_count(c) == 0 for c in captions], device=logits.device)
    background = torch.where(none_there.view(-1, 1, 1, 1), torch.ones_like(allowed), 1.0 - allowed)
    present = [_states_a_lesion(c) for c in captions]
    return known_background_loss(logits, background) + presence_loss(logits, allowed, present)
