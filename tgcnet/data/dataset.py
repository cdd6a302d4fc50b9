"""A torch Dataset over checked triples, and its collate function."""
from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .dicom import is_dicom, read_dicom
from .probe import DICOM_MASK_ADVICE, describe_error
from .readers import DataError, Triple

__all__ = ["SegmentationDataset", "collate", "load_image", "load_mask", "binarize_mask", "full_scale",
           "HIGH_BIT_DEPTHS"]


#: Bit depths a more-than-8-bit image can be stored at; see :func:`full_scale`.
HIGH_BIT_DEPTHS: tuple[int, ...] = (10, 12, 14, 16)


def full_scale(peak: int) -> int:
    """The value that means full intensity in a more-than-8-bit image whose largest value is ``peak``.

    That is ``2**bits - 1`` for the smallest ``bits`` of :data:`HIGH_BIT_DEPTHS` whose range
    holds ``peak``: X-ray exports store 10-, 12- or 14-bit data in 16-bit files, so dividing
    by 65535 would make a 12-bit image (max 4080) nearly black. The PNG sBIT chunk would
    say the depth, but Pillow does not expose it, so the depth is inferred from the data.
    """
    if not 0 <= peak <= 2 ** HIGH_BIT_DEPTHS[-1] - 1:
        raise ValueError(f"peak {peak} is outside 0..{2 ** HIGH_BIT_DEPTHS[-1] - 1}")
    return next(2**b - 1 for b in HIGH_BIT_DEPTHS if peak <= 2**b - 1)


def _unreadable(path: Path, what: str, exc: Exception) -> DataError:
    reason = describe_error(exc, path)
    return DataError(f"cannot read {what} {path}: {reason}; replace or remove the file",
                     [(path, f"cannot read {what}: {reason}")])


# Pillow rawmodes of 16 bits per sample that it narrows to an 8-bit mode (RGB;16B, LA;16B,
# RGBA;16L, ...); not BMP's packed BGR;16, whose samples have 5-6 bits.
_NARROWED_16BIT = re.compile(r";16[BLN]$")


def _is_narrowed_16bit(im: Image.Image) -> bool:
    """Whether Pillow decodes this file's 16-bit samples to 8 bits by keeping the high byte."""
    args = im.tile[0].args if im.tile else None
    rawmode = args if isinstance(args, str) else (args[0] if args else "")
    return not im.mode.startswith("I") and bool(_NARROWED_16BIT.search(str(rawmode)))


def _decode_16bit_colour(path: Path, what: str) -> np.ndarray | None:
    """uint16 HxWx3 RGB pixels of a 16-bit colour file, decoded by OpenCV; None if it is 8-bit after all."""
    buffer = np.fromfile(path, np.uint8)  # imdecode, unlike imread, takes any path on any OS
    arr = cv2.imdecode(buffer, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_COLOR)
    if arr is None:
        raise DataError(f"cannot read {what} {path}: a 16-bit colour file OpenCV cannot decode; save it as a "
                        "16-bit grayscale or 8-bit PNG", [(path, f"cannot read {what}: 16-bit colour")])
    if arr.dtype != np.uint16:
        return None
    return np.ascontiguousarray(arr[..., ::-1])  # BGR -> RGB; alpha was dropped


def _wide_pixels(im: Image.Image, path: Path, what: str) -> np.ndarray | None:
    """uint16 pixels of a more-than-8-bit image, HxW or HxWx3; None for an 8-bit one.

    Pillow gives 16-bit grayscale as mode I;16 (or I), but decodes 16-bit colour to 8 bits
    by keeping the high byte, which turns 12-bit colour data nearly black: such files are
    decoded again with OpenCV. Floats and integers outside 0..65535 have no agreed
    intensity scale, so they are refused rather than guessed at.
    """
    if im.mode == "F":
        raise DataError(f"{what} {path} has floating-point pixels (mode F); save it as an 8- or 16-bit PNG",
                        [(path, f"{what} has floating-point pixels")])
    if im.mode.startswith("I"):
        arr = np.asarray(im)
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise DataError(f"{what} {path} has values {lo}..{hi}; accepted are 0..65535 (8- or 16-bit); "
                            "rescale it and save it as a 16-bit PNG", [(path, f"{what} values {lo}..{hi}")])
        return arr.astype(np.uint16)
    if _is_narrowed_16bit(im):
        return _decode_16bit_colour(path, what)
    return None


def _decode(path: str | Path, what: str, decode: Callable[[Image.Image, Path], Any]) -> Any:
    """``decode(opened image, path)``, with any failure to read the file a DataError naming it.

    The files were checked by read_split, but can change before training reads them, and
    some damage (a truncated JPEG) shows only on decoding; Pillow's message then names no
    file, and it surfaces from a DataLoader worker mid-epoch.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            return decode(im, path)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:  # what PIL raises for broken files
        raise _unreadable(path, what, exc) from exc


def load_image(path: str | Path) -> np.ndarray:
    """uint8 HxW (grayscale) or HxWx3 (colour) array of an image file.

    8-bit images are returned unchanged. Images with more than 8 bits per sample (16-bit
    PNG/TIFF, grayscale or colour; integer TIFFs) are scaled to 8 bits by their stored bit
    depth: ``round(value * 255 / full_scale(max))``, where :func:`full_scale` is
    ``2**bits - 1`` for the smallest of 10, 12, 14 and 16 bits that holds the image's
    maximum. So a 12-bit image with max 4080 gives 254 (0.996 in a Dataset item), a 16-bit
    one with max 65535 gives 255, and 8-bit data saved in a 16-bit file (max 255) counts
    as 10-bit (255 -> 64): save such data as 8-bit. Float images and values outside
    0..65535 are a DataError. Palette, alpha and other modes become RGB (or L for 8-bit
    grayscale with alpha), so the transforms see only the two layouts they are written
    for. DICOM files (see :func:`~tgcnet.data.dicom.is_dicom`) are read by
    :func:`~tgcnet.data.dicom.read_dicom`, which scales by the depth the file states
    (Bits Stored), so 8-bit DICOM pixels come back as a PNG's would. A file that cannot
    be read is a DataError naming it.
    """
    if is_dicom(path):
        return read_dicom(path)
    return _decode(path, "image", _image_pixels)


def _image_pixels(im: Image.Image, path: Path) -> np.ndarray:
    wide = _wide_pixels(im, path, "image")
    if wide is not None:
        top = full_scale(int(wide.max()) if wide.size else 0)
        return np.round(wide * (255.0 / top)).astype(np.uint8)
    if im.mode in ("L", "RGB"):
        return np.asarray(im).copy()
    if im.mode in ("1", "LA"):
        return np.asarray(im.convert("L")).copy()
    return np.asarray(im.convert("RGB")).copy()


def binarize_mask(mask: np.ndarray) -> tuple[np.ndarray, bool]:
    """(uint8 {0,1} mask, whether the input was binary).

    Foreground is where the value is above half the mask's full scale: masks stored as 0/1
    (max <= 1) where value > 0; 8-bit masks (max <= 255) where value > 127; masks with
    larger values where value > full_scale(max) // 2, the same bit-depth rule as images
    (a 12-bit 0/4095 mask: > 2047; a 16-bit one: > 32767). The input counts as binary when
    it holds at most two values, 0 and its maximum; anything else (JPEG-compressed or
    resampled masks) is still binarised but flagged so it can be reported.
    """
    if mask.ndim == 3:  # masks saved as RGB(A): any colour channel counts
        mask = mask[..., :3].max(axis=-1) if mask.shape[-1] >= 3 else mask[..., 0]
    top = int(mask.max()) if mask.size else 0
    threshold = 0 if top <= 1 else (127 if top <= 255 else full_scale(top) // 2)
    binary = np.isin(mask, (0, top)).all()
    return (mask > threshold).astype(np.uint8), bool(binary)


def load_mask(path: str | Path) -> tuple[np.ndarray, bool]:
    """uint8 {0,1} HxW mask of a file and whether the file was binary (see binarize_mask).

    Decoded like images (:func:`load_image`): 16-bit files keep their values, so the
    threshold follows their bit depth. A file that cannot be read is a DataError naming it.
    Masks must be image files: a DICOM mask is refused rather than windowed like an image,
    which could move the boundary between lesion and background.
    """
    if is_dicom(path):
        raise DataError(f"mask {path} is a DICOM file; {DICOM_MASK_ADVICE}", [(Path(path), "DICOM mask")])
    return _decode(path, "mask", _mask_pixels)


def _mask_pixels(im: Image.Image, path: Path) -> tuple[np.ndarray, bool]:
    wide = _wide_pixels(im, path, "mask")
    if wide is not None:
        return binarize_mask(wide)
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
    """Items ``{"image": (3,H,W) float32 in [0,1], "mask": (1,H,W) float32 in {0,1}, "labelled": bool
    tensor, "caption", "name"}``.

    An image without a mask (``Triple.mask_path`` None: semi-supervised training) has an
    all-zero mask and ``labelled`` False; it is augmented exactly as it would be with its
    mask, so hiding a mask changes nothing else about the item.

    Grayscale images are repeated to 3 channels because CLIP expects RGB; colour images
    are kept; 16-bit images are scaled by their bit depth (see :func:`load_image`). Masks
    are binarised on load (``> 127`` for 8-bit masks, ``> 0`` for masks stored as 0/1,
    above half the bit depth's full scale for 16-bit ones; see :func:`binarize_mask`), and
    a non-binary mask file is reported once with a warning naming it.

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
        if t.mask_path is None:
            mask, binary = np.zeros(image.shape[:2], np.uint8), True
        else:
            mask, binary = load_mask(t.mask_path)
        if not binary and t.mask_path not in self._reported:
            self._reported.add(t.mask_path)
            warnings.warn(f"mask {t.mask_path} is not binary (values other than 0 and its maximum); "
                          "binarised with > 127 (8-bit) / > 0 (0-1 masks) / > half the full scale (16-bit)",
                          stacklevel=2)
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
                .to(torch.float32).unsqueeze(0), "labelled": torch.tensor(t.mask_path is not None),
                "caption": caption, "name": t.name}


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
