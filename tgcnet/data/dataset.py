"""A torch Dataset over checked triples, and its collate function."""
from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .readers import DataError, Triple

__all__ = ["SegmentationDataset", "collate", "load_image", "load_mask", "binarize_mask"]


def load_image(path: str | Path) -> np.ndarray:
    """uint8 HxW (grayscale) or HxWx3 (colour) array of an image file.

    16-bit images are scaled to 8 bits; palette, alpha and other modes become RGB (or L for
    grayscale with alpha), so the transforms see only the two layouts they are written for.
    """
    with Image.open(path) as im:
        if im.mode in ("L", "RGB"):
            return np.asarray(im).copy()
        if im.mode in ("1", "LA"):
            return np.asarray(im.convert("L")).copy()
        if im.mode.startswith("I") or im.mode == "F":
            arr = np.asarray(im).astype(np.float64)
            top = 65535.0 if arr.max() > 255 else 255.0
            return np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8)
        return np.asarray(im.convert("RGB")).copy()


def binarize_mask(mask: np.ndarray) -> tuple[np.ndarray, bool]:
    """(uint8 {0,1} mask, whether the input was binary).

    8-bit masks (max > 1) are foreground where value > 127; masks stored as 0/1 are
    foreground where value > 0; 16-bit masks (max > 255) where value > 32767. The input
    counts as binary when it holds at most two values, 0 and its maximum; anything else
    (JPEG-compressed or resampled masks) is still binarised but flagged so it can be
    reported.
    """
    if mask.ndim == 3:  # masks saved as RGB(A): any colour channel counts
        mask = mask[..., :3].max(axis=-1) if mask.shape[-1] >= 3 else mask[..., 0]
    top = int(mask.max()) if mask.size else 0
    threshold = 0 if top <= 1 else (127 if top <= 255 else 32767)
    binary = np.isin(mask, (0, top)).all()
    return (mask > threshold).astype(np.uint8), bool(binary)


def load_mask(path: str | Path) -> tuple[np.ndarray, bool]:
    """uint8 {0,1} HxW mask of a file and whether the file was binary (see binarize_mask)."""
    with Image.open(path) as im:
        if im.mode == "P":
            im = im.convert("L")
        return binarize_mask(np.asarray(im))


def _accepts_rng(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "rng" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class SegmentationDataset(Dataset):
    """Items ``{"image": (3,H,W) float32 in [0,1], "mask": (1,H,W) float32 in {0,1}, "caption", "name"}``.

    Grayscale images are repeated to 3 channels because CLIP expects RGB; colour images
    are kept. Masks are binarised on load (``> 127`` for 8-bit masks, ``> 0`` for masks
    stored as 0/1; see :func:`binarize_mask`), and a non-binary mask file is reported once
    with a warning naming it.

    ``transform(image, mask, caption[, rng])`` runs on uint8 arrays. When it accepts
    ``rng`` it gets a Generator seeded by (seed, epoch, index): augmentation then depends
    on neither worker count nor load order, and a resumed run that calls
    :meth:`set_epoch` reproduces it exactly.
    """

    def __init__(self, triples: Sequence[Triple], transform: Callable | None = None, seed: int = 0):
        self.triples = list(triples)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self._pass_rng = transform is not None and _accepts_rng(transform)
        self._reported: set[Path] = set()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's augmentation stream (call it as with DistributedSampler.set_epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.triples)

    def rng(self, index: int) -> np.random.Generator:
        """The generator that drives the augmentation of item ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __getitem__(self, index: int) -> dict[str, Any]:
        t = self.triples[index]
        image = load_image(t.image_path)
        mask, binary = load_mask(t.mask_path)
        if not binary and t.mask_path not in self._reported:
            self._reported.add(t.mask_path)
            warnings.warn(f"mask {t.mask_path} is not binary (values other than 0 and its maximum); "
                          "binarised with > 127 (8-bit) / > 0 (0-1 masks)", stacklevel=2)
        if image.shape[:2] != mask.shape:
            raise DataError(f"image {t.image_path} is {image.shape[1]}x{image.shape[0]} but mask {t.mask_path} "
                            f"is {mask.shape[1]}x{mask.shape[0]}",
                            [(t.image_path, f"size mismatch with {t.mask_path}")])
        caption = t.caption
        if self.transform is not None:
            if self._pass_rng:
                image, mask, caption = self.transform(image, mask, caption, rng=self.rng(index))
            else:
                image, mask, caption = self.transform(image, mask, caption)
        return {"image": _image_tensor(image), "mask": torch.from_numpy(np.ascontiguousarray(mask > 0))
                .to(torch.float32).unsqueeze(0), "caption": caption, "name": t.name}


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(image)).to(torch.float32).div_(255.0)
    if x.ndim == 2:
        return x.unsqueeze(0).repeat(3, 1, 1)
    return x.permute(2, 0, 1).contiguous()


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors; keep captions, names and any other non-tensor field as lists."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                names = [item.get("name") for item in batch]
                raise ValueError(f"cannot stack {key!r} of different shapes {sorted(shapes)} (items {names}); "
                                 "resize with build_transforms(train, image_size=...)")
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out
