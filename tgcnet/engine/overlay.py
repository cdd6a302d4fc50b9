"""Overlay PNGs: the image, the predicted contour, the ground-truth contour, the caption.

PIL and numpy only, so looking at predictions needs nothing beyond the install. Contours
rather than filled masks because a radiologist wants to see the opacity under the mask.
"""
from __future__ import annotations

import textwrap
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["PRED_COLOR", "GT_COLOR", "erode", "contour", "draw_contours", "render_overlay"]

PRED_COLOR = (255, 48, 48)  # red: prediction
GT_COLOR = (48, 220, 80)  # green: ground truth
_MIN_WIDTH = 448  # small scans are upscaled so one-pixel contours and the caption stay legible


def erode(mask: np.ndarray) -> np.ndarray:
    """Binary erosion with a 3x3 cross; pixels outside the image count as background."""
    m = np.pad(mask.astype(bool), 1, constant_values=False)
    return m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]


def contour(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Inner boundary of a binary mask (mask XOR its erosion), ``thickness`` pixels wide."""
    mask = np.asarray(mask).astype(bool)
    inner = mask
    for _ in range(max(1, int(thickness))):
        inner = erode(inner)
    return mask & ~inner


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def _check_sizes(image: np.ndarray, pred: np.ndarray, gt: Optional[np.ndarray]) -> None:
    for what, m in (("prediction", pred), ("ground truth", gt)):
        if m is not None and m.shape[:2] != image.shape[:2]:
            raise ValueError(f"{what} mask is {m.shape[1]}x{m.shape[0]} but the image is "
                             f"{image.shape[1]}x{image.shape[0]}")


def draw_contours(image: np.ndarray, pred: np.ndarray, gt: Optional[np.ndarray] = None) -> np.ndarray:
    """uint8 HxWx3: the image with the prediction's contour in red (and the ground truth's in
    green), at the image's own size; lines are about one 224th of the width, at least 2 pixels.

    ``image`` is uint8 HxW or HxWx3; ``pred`` and ``gt`` are HxW binary masks of the same size.
    """
    canvas = _rgb(image).copy()
    _check_sizes(canvas, pred, gt)
    thickness = max(2, round(canvas.shape[1] / 224))
    if gt is not None:
        canvas[contour(gt, thickness)] = GT_COLOR
    canvas[contour(pred, thickness)] = PRED_COLOR
    return canvas


def render_overlay(image: np.ndarray, pred: np.ndarray, caption: str = "", gt: Optional[np.ndarray] = None,
                   dice: Optional[float] = None) -> Image.Image:
    """RGB overlay: contours drawn on the image (:func:`draw_contours`), caption and legend in a
    band below it; small scans are upscaled first so the lines and the text stay legible.

    ``image`` is uint8 HxW or HxWx3; ``pred`` and ``gt`` are HxW binary masks of the same size.
    """
    image = _rgb(image)
    _check_sizes(image, pred, gt)
    scale = max(1, -(-_MIN_WIDTH // image.shape[1]))
    if scale > 1:  # nearest-neighbour: masks stay binary, contours crisp
        image = image.repeat(scale, 0).repeat(scale, 1)
        pred = pred.repeat(scale, 0).repeat(scale, 1)
        gt = gt.repeat(scale, 0).repeat(scale, 1) if gt is not None else None
    canvas = draw_contours(image, pred, gt)
    h, w = canvas.shape[:2]

    font_size = max(12, w // 32)
    font = _font(font_size)
    chars = max(20, int(w / (font_size * 0.55)))
    lines = textwrap.wrap(caption or "(no caption)", width=chars) or [""]
    legend = [("prediction", PRED_COLOR)] + ([("ground truth", GT_COLOR)] if gt is not None else [])
    line_h = int(font_size * 1.35)
    band = line_h * (len(lines) + 1) + 8
    out = Image.new("RGB", (w, h + band), (0, 0, 0))
    out.paste(Image.fromarray(canvas), (0, 0))
    draw = ImageDraw.Draw(out)
    y = h + 4
    for line in lines:
        draw.text((6, y), line, fill=(255, 255, 255), font=font)
        y += line_h
    x = 6
    for label, color in legend:
        draw.rectangle([x, y + 3, x + font_size - 4, y + font_size - 1], fill=color)
        x += font_size + 2
        draw.text((x, y), label, fill=color, font=font)
        x += int(draw.textlength(label, font=font)) + font_size
    if dice is not None:
        draw.text((x, y), f"Dice {dice:.3f}", fill=(255, 255, 255), font=font)
    return out
